//! The tamper-evident audit trail: AuditEvent resources chained by SHA-256, one chain per tenant.
//!
//! AuditEvents are ordinary resources (stored, indexed and searchable like any other); beside
//! them, `audit_chain` holds one row per event, `(seq, resource_id, hash)`, where
//!
//! ```text
//! hash(n) = hex(sha256(hash(n-1) "\n" n "\n" resource_id "\n" content))
//! ```
//!
//! `content` is the resource JSON exactly as stored and `hash(0)` is 64 zeros; `audit_head`
//! holds the last `(seq, hash)`. Editing, deleting or slipping in an event behind the store's
//! back breaks a link, a sequence number or the head, and [`Tx::verify_audit_chain`] reports it.

use crate::error::StoreError;
use crate::identity::{SysTx, parse_tenant};
use crate::repo::{Stored, Tx};
use chrono::{DateTime, Utc};
use ehr_core::TenantId;
use sea_orm::DbBackend;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// The hash before the first link of every chain.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Rows read per statement while verifying: memory stays bounded whatever the chain length.
/// Tiny under test, so that the short chains of the tests cross page boundaries.
const PAGE: i64 = if cfg!(test) { 2 } else { 1000 };

/// One inconsistency found by [`Tx::verify_audit_chain`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditProblem {
    /// Sequence numbers skip: chain rows were removed. The row after the gap cannot be checked
    /// against its (missing) predecessor.
    SeqGap { expected: i64, found: i64 },
    /// The recomputed hash differs from the recorded one: the event's content, its id or the
    /// previous hash were changed.
    HashMismatch { seq: i64, resource_id: String },
    /// The chained AuditEvent is no longer in the resource table.
    MissingResource { seq: i64, resource_id: String },
    /// The chained AuditEvent was updated or deleted through the resource store (an AuditEvent
    /// is written once, at version 1).
    ModifiedResource { seq: i64, resource_id: String },
    /// The head does not match the end of the chain (rows removed from or added at the end).
    HeadMismatch,
    /// An AuditEvent resource that no chain row covers (inserted behind the chain's back).
    Unchained { resource_id: String },
}

/// The outcome of [`Tx::verify_audit_chain`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditVerification {
    /// The number of chain rows checked.
    pub checked: u64,
    /// Every inconsistency found, in chain order, then unchained events by id.
    pub problems: Vec<AuditProblem>,
}

impl AuditVerification {
    /// True when the chain is intact.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The hash of link `seq`, given the hash of the link before it.
pub(crate) fn link_hash(prev: &str, seq: i64, resource_id: &str, content: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(b"\n");
    hasher.update(seq.to_string().as_bytes());
    hasher.update(b"\n");
    hasher.update(resource_id.as_bytes());
    hasher.update(b"\n");
    hasher.update(content.as_bytes());
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

impl Tx {
    /// Stores AuditEvent resources and appends them to the tenant's hash chain, in this
    /// transaction; returns the stored events in order.
    ///
    /// Concurrent appenders of one tenant (several gateway replicas) are serialised on the
    /// tenant's head row, which this transaction holds until it ends: commit promptly.
    pub async fn append_audit(&self, events: Vec<Json>, now: DateTime<Utc>) -> Result<Vec<Stored>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = self.tenant.as_str();
        // The genesis head is created on first use; DO NOTHING makes a concurrent first append
        // wait for the other's row instead of failing on the key.
        self.exec(
            "INSERT INTO audit_head (tenant_id, seq, hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING",
            vec![tenant.into(), GENESIS.into()],
        )
        .await?;
        // PostgreSQL: the row lock serialises appenders per tenant. SQLite: the single writer
        // connection already runs one write transaction at a time.
        let lock = if self.backend == DbBackend::Postgres { " FOR UPDATE" } else { "" };
        let rows = self
            .query(&format!("SELECT seq, hash FROM audit_head WHERE tenant_id = $1{lock}"), vec![tenant.into()])
            .await?;
        let head = rows.first().ok_or_else(|| StoreError::corrupt("audit_head"))?;
        let mut seq: i64 = head.try_get("", "seq")?;
        let mut hash: String = head.try_get("", "hash")?;
        // One multi-row statement per table for the whole batch: the audit trail is written for
        // every request, so its cost per event must stay far below a request's.
        let stored = self.create_many("AuditEvent", events, now, false).await?;
        for chunk in stored.chunks(500) {
            let mut sql = crate::sql::Sql::new(tenant);
            let mut rows = Vec::with_capacity(chunk.len());
            for event in chunk {
                seq += 1;
                hash = link_hash(&hash, seq, &event.id, &event.content);
                let (s, id, h) = (sql.bind(seq), sql.bind(event.id.as_str()), sql.bind(hash.as_str()));
                rows.push(format!("($1, {s}, {id}, {h})"));
            }
            self.exec(
                &format!("INSERT INTO audit_chain (tenant_id, seq, resource_id, hash) VALUES {}", rows.join(", ")),
                sql.values,
            )
            .await?;
        }
        self.exec(
            "UPDATE audit_head SET seq = $2, hash = $3 WHERE tenant_id = $1",
            vec![tenant.into(), seq.into(), hash.as_str().into()],
        )
        .await?;
        Ok(stored)
    }

    /// Checks the tenant's audit chain against the stored AuditEvents and the head.
    ///
    /// The chain is read in pages; the events are read as they are now. The head and the end of
    /// the chain are read in one statement (one snapshot), and only the links up to that point
    /// are walked, so events appended concurrently are neither checked nor reported.
    pub async fn verify_audit_chain(&self) -> Result<AuditVerification, StoreError> {
        let tenant = self.tenant.as_str();
        let mut report = AuditVerification::default();
        let rows = self
            .query(
                "SELECT (SELECT seq FROM audit_head WHERE tenant_id = $1) AS head_seq, \
                 (SELECT hash FROM audit_head WHERE tenant_id = $1) AS head_hash, \
                 (SELECT MAX(seq) FROM audit_chain WHERE tenant_id = $1) AS last_seq",
                vec![tenant.into()],
            )
            .await?;
        let row = rows.first().ok_or_else(|| StoreError::corrupt("audit_head"))?;
        let head_seq = row.try_get::<Option<i64>>("", "head_seq")?.unwrap_or(0);
        let head_hash = row.try_get::<Option<String>>("", "head_hash")?.unwrap_or_else(|| GENESIS.to_owned());
        let last_seq = row.try_get::<Option<i64>>("", "last_seq")?.unwrap_or(0);
        // Every append moves the head with its rows in one commit: in one snapshot, the last
        // link and the head agree, or the chain was cut or extended behind the store's back.
        let mut head_ok = last_seq == head_seq;
        // Every row up to `last_seq` was committed in that snapshot (a later append numbers its
        // rows above it), so walking to there checks exactly the chain as of the snapshot, even
        // where the head was rolled back or removed.
        let end = last_seq.max(head_seq);

        let mut expected = 1_i64;
        let mut prev = GENESIS.to_owned();
        // From the lowest possible key: a forged row numbered 0 or below is a gap, not invisible.
        let mut after = i64::MIN;
        loop {
            let page = self
                .query(
                    "SELECT c.seq, c.resource_id, c.hash, r.version_id, r.deleted, r.content \
                     FROM audit_chain c LEFT JOIN resources r ON r.tenant_id = $1 \
                     AND r.resource_type = 'AuditEvent' AND r.id = c.resource_id \
                     WHERE c.tenant_id = $1 AND c.seq > $2 AND c.seq <= $3 ORDER BY c.seq LIMIT $4",
                    vec![tenant.into(), after.into(), end.into(), PAGE.into()],
                )
                .await?;
            for row in &page {
                let seq: i64 = row.try_get("", "seq")?;
                let resource_id: String = row.try_get("", "resource_id")?;
                let hash: String = row.try_get("", "hash")?;
                let version: Option<i64> = row.try_get("", "version_id")?;
                let deleted: Option<i32> = row.try_get("", "deleted")?;
                let content: Option<String> = row.try_get("", "content")?;
                report.checked += 1;
                // After a gap the predecessor's hash is unknown: the gap is the finding, and
                // the chain resumes from this row's recorded hash.
                let linked = seq == expected;
                if !linked {
                    report.problems.push(AuditProblem::SeqGap { expected, found: seq });
                }
                match (version, deleted, content) {
                    (Some(version), Some(deleted), Some(content)) => {
                        if version != 1 || deleted != 0 {
                            report.problems.push(AuditProblem::ModifiedResource { seq, resource_id });
                        } else if linked && link_hash(&prev, seq, &resource_id, &content) != hash {
                            report.problems.push(AuditProblem::HashMismatch { seq, resource_id });
                        }
                    }
                    _ => report.problems.push(AuditProblem::MissingResource { seq, resource_id }),
                }
                // The recorded hash, not the recomputed one, carries on: one altered event is
                // one finding, not a cascade over every later link.
                prev = hash;
                expected = seq + 1;
                after = seq;
            }
            if page.len() < PAGE as usize {
                break;
            }
        }
        // The walk ended at the head's row: its hash must be the head's (an empty chain compares
        // genesis with genesis).
        if head_ok && prev != head_hash {
            head_ok = false;
        }
        if !head_ok {
            report.problems.push(AuditProblem::HeadMismatch);
        }
        self.find_unchained(&mut report).await?;
        Ok(report)
    }

    /// Adds an [`AuditProblem::Unchained`] for every AuditEvent resource no chain row covers.
    async fn find_unchained(&self, report: &mut AuditVerification) -> Result<(), StoreError> {
        let tenant = self.tenant.as_str();
        // Keyset pages over the resource table's primary key. An event appended concurrently
        // commits with its chain row, so one statement never sees one without the other.
        let mut after = String::new();
        loop {
            let page = self
                .query(
                    "SELECT r.id FROM resources r WHERE r.tenant_id = $1 AND r.resource_type = 'AuditEvent' \
                     AND r.id > $2 AND NOT EXISTS (SELECT 1 FROM audit_chain c \
                     WHERE c.tenant_id = $1 AND c.resource_id = r.id) ORDER BY r.id LIMIT $3",
                    vec![tenant.into(), after.as_str().into(), PAGE.into()],
                )
                .await?;
            for row in &page {
                let resource_id: String = row.try_get("", "id")?;
                after.clone_from(&resource_id);
                report.problems.push(AuditProblem::Unchained { resource_id });
            }
            if page.len() < PAGE as usize {
                return Ok(());
            }
        }
    }
}

impl SysTx {
    /// The tenants whose audit chains a verification run should check: every registered tenant.
    ///
    /// `audit_head` is tenant data and row-level security hides it from a system transaction on
    /// PostgreSQL, so the registry is the list; a tenant that never audited verifies as an empty
    /// chain. Tenants that are not registered (development tokens) are not listed.
    pub async fn audit_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let rows = self.query("SELECT id FROM tenants ORDER BY id", Vec::new()).await?;
        rows.iter().map(|r| parse_tenant(&r.try_get::<String>("", "id")?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_is_64_zeros_and_links_are_hex_sha256() {
        assert_eq!(GENESIS.len(), 64);
        assert!(GENESIS.bytes().all(|b| b == b'0'));
        // sha256("") is the well-known e3b0c442…; an empty input proves hex() and the digest.
        assert_eq!(hex(&Sha256::digest(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let h = link_hash(GENESIS, 1, "a", "{}");
        assert_eq!(h.len(), 64);
        assert_ne!(h, link_hash(GENESIS, 2, "a", "{}"));
    }
}
