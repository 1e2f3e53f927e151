//! The FHIR resource store: a versioned, tenant-scoped repository over SQLite or PostgreSQL.
//!
//! Layout (the one HAPI and Medplum use): the current version of every resource in `resources`,
//! every version in `resource_history`, and one index table per search-parameter kind
//! (`sp_token`, `sp_string`, `sp_date`, `sp_reference`, `sp_quantity`, `sp_number`, `sp_uri`),
//! all written in one transaction. Every row carries `tenant_id`; every statement binds it; on
//! PostgreSQL row-level security enforces it a second time.
//!
//! Beside the resources: the gateway's identity state ([`SysTx`] for tenants, OAuth clients and
//! signing keys; the tenant's [`Tx`] for users and recovery codes) and the per-tenant hash chain
//! over AuditEvents (`Tx::append_audit`, `Tx::verify_audit_chain`).
//!
//! Events leave through the transactional outbox ([`Tx::emit`], relayed by `ehr-events`);
//! consumers deduplicate with receipts ([`Tx::record_receipt`]).

mod audit;
pub mod backup;
mod error;
mod export;
mod identity;
mod lab;
mod migration;
mod national;
mod outbox;
mod repo;
mod sql;
mod stats;

pub use audit::{AuditProblem, AuditVerification};
pub use error::StoreError;
pub use export::{ExportEnd, ExportJob, ExportKind, ExportState, NewExportJob};
pub use identity::{ClientRecord, KeyRecord, NewUser, SysTx, TenantRecord, UserRecord};
pub use lab::{Hl7Message, LabEndpoint, MessageFilter};
pub use migration::{APP_ROLE, METRICS_ROLE, Migrator, RELAY_ROLE};
pub use national::{Submission, SubmissionFilter};
pub use outbox::{DeadLetter, EventId, NewEvent, OutboxBatch, OutboxEvent, is_valid_topic};
pub use repo::{HistoryScope, SearchPage, Store, StoreConfig, Stored, Tx};
pub use stats::{Hl7QueueDepth, PoolStats};

#[cfg(test)]
mod tests;
