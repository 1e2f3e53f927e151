//! The lab-interface service's tables: lab endpoints (per tenant, read across tenants to route
//! inbound messages) and the HL7 v2 message log (per tenant, row-level security).
//!
//! The message log is also the outbound queue: an order message is a row in state `pending`
//! with a due time; the sender claims due rows by pushing their due time past a lease, sends,
//! and records the reply. A crash between claim and reply leaves the row due again when the
//! lease ends, so a message is sent at least once; labs deduplicate by MSH-10, as we do.

use crate::error::StoreError;
use crate::identity::SysTx;
use crate::repo::Tx;
use ehr_core::TenantId;
use sea_orm::{QueryResult, Value};
use serde::{Deserialize, Serialize};

/// An outsourced lab (外注検査センター) a tenant exchanges HL7 v2 messages with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabEndpoint {
    pub id: String,
    pub tenant: TenantId,
    pub name: String,
    /// The lab's facility (MSH-4 of its messages, MSH-6 of ours).
    pub lab_facility: String,
    /// The lab's application (MSH-3 of its messages, MSH-5 of ours).
    pub lab_application: String,
    /// Our facility as the lab knows it (MSH-4 of our messages, MSH-6 of its).
    pub our_facility: String,
    /// Our application (MSH-3 of our messages).
    pub our_application: String,
    /// `mllp` or `file`.
    pub transport: String,
    /// `host:port` for MLLP, a directory for file batches.
    pub address: String,
    /// `iso-ir-87` (ISO-2022-JP, the JAHIS default) or `utf-8`.
    pub charset: String,
    /// The Organization that orders name as performer to reach this lab (`Organization/lab-a`).
    pub organization: Option<String>,
    /// The lab orders without a performer go to.
    pub is_default: bool,
    /// Attempts before an outbound message is dead-lettered.
    pub max_attempts: i32,
    /// The addresses results from this lab may come from over MLLP (IP addresses); empty: any.
    pub allowed_peers: Vec<String>,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_outbound_at: Option<i64>,
    pub last_inbound_at: Option<i64>,
    pub last_error: Option<String>,
}

/// One HL7 v2 message, out or in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hl7Message {
    pub id: String,
    pub endpoint_id: String,
    /// `out` or `in`.
    pub direction: String,
    /// `OML^O33`, `OUL^R22`, …
    pub message_type: String,
    /// MSH-10.
    pub control_id: String,
    /// out: `pending`, `acked`, `rejected` (AE), `dead` (attempts exhausted or not sendable),
    /// `cancelled` (its order was cancelled before it was delivered); in: `accepted`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<i64>,
    pub last_error: Option<String>,
    /// What the message is about (`ServiceRequest/123`).
    pub subject: Option<String>,
    /// The message as text (decoded from its wire charset).
    pub payload: String,
    /// The reply (ACK/ORL) as text.
    pub reply: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// W3C `traceparent` of the span that queued or received the message (m0007): the sender's
    /// span continues the order's trace.
    pub trace: Option<String>,
}

/// Filters of the message-log listing.
#[derive(Debug, Default, Clone)]
pub struct MessageFilter<'a> {
    pub direction: Option<&'a str>,
    pub status: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub endpoint_id: Option<&'a str>,
    pub limit: u64,
}

const ENDPOINT_COLUMNS: &str = "id, tenant_id, name, lab_facility, lab_application, our_facility, our_application, \
     transport, address, charset, organization, is_default, max_attempts, allowed_peers, active, created_at, \
     updated_at, last_outbound_at, last_inbound_at, last_error";
const MESSAGE_COLUMNS: &str = "id, endpoint_id, direction, message_type, control_id, status, attempts, \
     next_attempt_at, last_error, subject, payload, reply, created_at, updated_at, trace";

fn flag(row: &QueryResult, column: &str) -> Result<bool, StoreError> {
    Ok(row.try_get::<i32>("", column)? != 0)
}

fn row_to_endpoint(row: &QueryResult) -> Result<LabEndpoint, StoreError> {
    let tenant: String = row.try_get("", "tenant_id")?;
    Ok(LabEndpoint {
        id: row.try_get("", "id")?,
        tenant: TenantId::parse(&tenant).map_err(|_| StoreError::corrupt("lab_endpoints.tenant_id"))?,
        name: row.try_get("", "name")?,
        lab_facility: row.try_get("", "lab_facility")?,
        lab_application: row.try_get("", "lab_application")?,
        our_facility: row.try_get("", "our_facility")?,
        our_application: row.try_get("", "our_application")?,
        transport: row.try_get("", "transport")?,
        address: row.try_get("", "address")?,
        charset: row.try_get("", "charset")?,
        organization: row.try_get("", "organization")?,
        is_default: flag(row, "is_default")?,
        max_attempts: row.try_get("", "max_attempts")?,
        allowed_peers: row
            .try_get::<String>("", "allowed_peers")?
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
        active: flag(row, "active")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
        last_outbound_at: row.try_get("", "last_outbound_at")?,
        last_inbound_at: row.try_get("", "last_inbound_at")?,
        last_error: row.try_get("", "last_error")?,
    })
}

fn row_to_message(row: &QueryResult) -> Result<Hl7Message, StoreError> {
    Ok(Hl7Message {
        id: row.try_get("", "id")?,
        endpoint_id: row.try_get("", "endpoint_id")?,
        direction: row.try_get("", "direction")?,
        message_type: row.try_get("", "message_type")?,
        control_id: row.try_get("", "control_id")?,
        status: row.try_get("", "status")?,
        attempts: row.try_get("", "attempts")?,
        next_attempt_at: row.try_get("", "next_attempt_at")?,
        last_error: row.try_get("", "last_error")?,
        subject: row.try_get("", "subject")?,
        payload: row.try_get("", "payload")?,
        reply: row.try_get("", "reply")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
        trace: row.try_get("", "trace")?,
    })
}

impl SysTx {
    /// Registers a lab endpoint. The pair (lab facility, our facility) routes inbound messages to
    /// a tenant, so it is unique across tenants: a clash is [`StoreError::AlreadyExists`].
    pub async fn create_lab_endpoint(&self, e: &LabEndpoint) -> Result<(), StoreError> {
        let inserted = self
            .exec(
                &format!(
                    "INSERT INTO lab_endpoints ({ENDPOINT_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
                     ON CONFLICT DO NOTHING"
                ),
                endpoint_values(e),
            )
            .await?;
        if inserted == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    /// Replaces an endpoint's settings (not its id, tenant or activity stamps); false when the
    /// tenant has no such endpoint.
    pub async fn update_lab_endpoint(&self, e: &LabEndpoint) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE lab_endpoints SET name = $3, lab_facility = $4, lab_application = $5, our_facility = $6, \
                 our_application = $7, transport = $8, address = $9, charset = $10, organization = $11, \
                 is_default = $12, max_attempts = $13, active = $14, updated_at = $15, allowed_peers = $16 \
                 WHERE id = $1 AND tenant_id = $2",
                vec![
                    e.id.as_str().into(),
                    e.tenant.as_str().into(),
                    e.name.as_str().into(),
                    e.lab_facility.as_str().into(),
                    e.lab_application.as_str().into(),
                    e.our_facility.as_str().into(),
                    e.our_application.as_str().into(),
                    e.transport.as_str().into(),
                    e.address.as_str().into(),
                    e.charset.as_str().into(),
                    e.organization.clone().into(),
                    i32::from(e.is_default).into(),
                    e.max_attempts.into(),
                    i32::from(e.active).into(),
                    e.updated_at.into(),
                    e.allowed_peers.join(",").into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    /// One endpoint of a tenant.
    pub async fn lab_endpoint(&self, tenant: &TenantId, id: &str) -> Result<Option<LabEndpoint>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {ENDPOINT_COLUMNS} FROM lab_endpoints WHERE tenant_id = $1 AND id = $2"),
                vec![tenant.as_str().into(), id.into()],
            )
            .await?;
        rows.first().map(row_to_endpoint).transpose()
    }

    /// A tenant's endpoints, by name.
    pub async fn lab_endpoints_of(&self, tenant: &TenantId) -> Result<Vec<LabEndpoint>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {ENDPOINT_COLUMNS} FROM lab_endpoints WHERE tenant_id = $1 ORDER BY name, id"),
                vec![tenant.as_str().into()],
            )
            .await?;
        rows.iter().map(row_to_endpoint).collect()
    }

    /// Every active endpoint of every tenant (the sender's work list).
    pub async fn active_lab_endpoints(&self) -> Result<Vec<LabEndpoint>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {ENDPOINT_COLUMNS} FROM lab_endpoints WHERE active = 1 ORDER BY tenant_id, id"),
                Vec::new(),
            )
            .await?;
        rows.iter().map(row_to_endpoint).collect()
    }

    /// The endpoint an inbound message belongs to: the lab's facility (its MSH-4) and ours (its
    /// MSH-6).
    pub async fn lab_endpoint_by_facility(
        &self,
        lab_facility: &str,
        our_facility: &str,
    ) -> Result<Option<LabEndpoint>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {ENDPOINT_COLUMNS} FROM lab_endpoints WHERE lab_facility = $1 AND our_facility = $2"),
                vec![lab_facility.into(), our_facility.into()],
            )
            .await?;
        rows.first().map(row_to_endpoint).transpose()
    }

    /// Stamps an endpoint's last activity (`out` or `in`) and its last error (cleared on success).
    pub async fn touch_lab_endpoint(
        &self,
        tenant: &TenantId,
        id: &str,
        direction: &str,
        at: i64,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let column = if direction == "in" { "last_inbound_at" } else { "last_outbound_at" };
        self.exec(
            &format!("UPDATE lab_endpoints SET {column} = $3, last_error = $4 WHERE tenant_id = $1 AND id = $2"),
            vec![tenant.as_str().into(), id.into(), at.into(), error.map(str::to_owned).into()],
        )
        .await?;
        Ok(())
    }
}

fn endpoint_values(e: &LabEndpoint) -> Vec<Value> {
    vec![
        e.id.as_str().into(),
        e.tenant.as_str().into(),
        e.name.as_str().into(),
        e.lab_facility.as_str().into(),
        e.lab_application.as_str().into(),
        e.our_facility.as_str().into(),
        e.our_application.as_str().into(),
        e.transport.as_str().into(),
        e.address.as_str().into(),
        e.charset.as_str().into(),
        e.organization.clone().into(),
        i32::from(e.is_default).into(),
        e.max_attempts.into(),
        e.allowed_peers.join(",").into(),
        i32::from(e.active).into(),
        e.created_at.into(),
        e.updated_at.into(),
        e.last_outbound_at.into(),
        e.last_inbound_at.into(),
        e.last_error.clone().into(),
    ]
}

impl Tx {
    /// The endpoints of this transaction's tenant, by name — read in this transaction, so that a
    /// consumer holding it needs no second connection (several consumers each waiting for a
    /// second connection of a small pool would block one another).
    pub async fn lab_endpoints(&self) -> Result<Vec<LabEndpoint>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {ENDPOINT_COLUMNS} FROM lab_endpoints WHERE tenant_id = $1 ORDER BY name, id"),
                vec![self.tenant.as_str().into()],
            )
            .await?;
        rows.iter().map(row_to_endpoint).collect()
    }

    /// Appends a message to the tenant's log. A message with the same endpoint, direction and
    /// control id (MSH-10) is not stored again: `false` (a lab resending a result it got no ACK
    /// for is the normal case).
    pub async fn insert_hl7_message(&self, m: &Hl7Message) -> Result<bool, StoreError> {
        let inserted = self
            .exec(
                &format!(
                    "INSERT INTO hl7_messages (tenant_id, {MESSAGE_COLUMNS}) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ON CONFLICT DO NOTHING"
                ),
                vec![
                    self.tenant.as_str().into(),
                    m.id.as_str().into(),
                    m.endpoint_id.as_str().into(),
                    m.direction.as_str().into(),
                    m.message_type.as_str().into(),
                    m.control_id.as_str().into(),
                    m.status.as_str().into(),
                    m.attempts.into(),
                    m.next_attempt_at.into(),
                    m.last_error.clone().into(),
                    m.subject.clone().into(),
                    m.payload.as_str().into(),
                    m.reply.clone().into(),
                    m.created_at.into(),
                    m.updated_at.into(),
                    m.trace.clone().into(),
                ],
            )
            .await?;
        Ok(inserted == 1)
    }

    /// One message of the tenant's log.
    pub async fn hl7_message(&self, id: &str) -> Result<Option<Hl7Message>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {MESSAGE_COLUMNS} FROM hl7_messages WHERE tenant_id = $1 AND id = $2"),
                vec![self.tenant.as_str().into(), id.into()],
            )
            .await?;
        rows.first().map(row_to_message).transpose()
    }

    /// The message with this endpoint, direction and control id.
    pub async fn hl7_message_by_control_id(
        &self,
        endpoint_id: &str,
        direction: &str,
        control_id: &str,
    ) -> Result<Option<Hl7Message>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM hl7_messages WHERE tenant_id = $1 AND endpoint_id = $2 \
                     AND direction = $3 AND control_id = $4"
                ),
                vec![self.tenant.as_str().into(), endpoint_id.into(), direction.into(), control_id.into()],
            )
            .await?;
        rows.first().map(row_to_message).transpose()
    }

    /// The tenant's log, newest first.
    pub async fn hl7_messages(&self, f: &MessageFilter<'_>) -> Result<Vec<Hl7Message>, StoreError> {
        let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM hl7_messages WHERE tenant_id = $1");
        let mut values: Vec<Value> = vec![self.tenant.as_str().into()];
        for (column, value) in
            [("direction", f.direction), ("status", f.status), ("subject", f.subject), ("endpoint_id", f.endpoint_id)]
        {
            if let Some(v) = value {
                values.push(v.into());
                sql.push_str(&format!(" AND {column} = ${}", values.len()));
            }
        }
        let limit = if f.limit == 0 { 100 } else { f.limit.min(1000) };
        sql.push_str(&format!(" ORDER BY created_at DESC, id LIMIT {limit}"));
        let rows = self.query(&sql, values).await?;
        rows.iter().map(row_to_message).collect()
    }

    /// Claims up to `limit` outbound messages of one endpoint due at `now` for sending: pushes
    /// their due time to `lease_until` and returns them. On PostgreSQL, rows another sender holds
    /// are skipped.
    pub async fn claim_due_hl7(
        &self,
        endpoint_id: &str,
        now: i64,
        lease_until: i64,
        limit: u64,
    ) -> Result<Vec<Hl7Message>, StoreError> {
        let lock = if self.backend == sea_orm::DbBackend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let rows = self
            .query(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM hl7_messages WHERE tenant_id = $1 AND direction = 'out' \
                     AND status = 'pending' AND next_attempt_at <= $2 AND endpoint_id = $3 \
                     ORDER BY next_attempt_at, created_at LIMIT {limit}{lock}"
                ),
                vec![self.tenant.as_str().into(), now.into(), endpoint_id.into()],
            )
            .await?;
        let messages: Vec<Hl7Message> = rows.iter().map(row_to_message).collect::<Result<_, _>>()?;
        for m in &messages {
            self.exec(
                "UPDATE hl7_messages SET next_attempt_at = $3 WHERE tenant_id = $1 AND id = $2",
                vec![self.tenant.as_str().into(), m.id.as_str().into(), lease_until.into()],
            )
            .await?;
        }
        Ok(messages)
    }

    /// Records the outcome of a delivery attempt — only while the message is still `pending` and
    /// held by this claim (`claimed_until`, the lease its claim set): false when the claim ran out
    /// and another sender took it, or the message was cancelled meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_hl7_attempt(
        &self,
        id: &str,
        claimed_until: i64,
        status: &str,
        next_attempt_at: Option<i64>,
        error: Option<&str>,
        reply: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE hl7_messages SET status = $3, attempts = attempts + 1, next_attempt_at = $4, last_error = $5, \
                 reply = COALESCE($6, reply), updated_at = $7 WHERE tenant_id = $1 AND id = $2 \
                 AND status = 'pending' AND next_attempt_at = $8",
                vec![
                    self.tenant.as_str().into(),
                    id.into(),
                    status.into(),
                    next_attempt_at.into(),
                    error.map(str::to_owned).into(),
                    reply.map(str::to_owned).into(),
                    now.into(),
                    claimed_until.into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Moves a message to `status` only from one of `from` (in one statement, so a sender
    /// recording `acked` at the same moment is either before — and this changes nothing — or
    /// after, and finds the message no longer pending). False when it was in none of them.
    pub async fn change_hl7_status(
        &self,
        id: &str,
        from: &[&str],
        status: &str,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut values: Vec<Value> =
            vec![self.tenant.as_str().into(), id.into(), status.into(), error.map(str::to_owned).into(), now.into()];
        let mut placeholders = Vec::new();
        for f in from {
            values.push((*f).into());
            placeholders.push(format!("${}", values.len()));
        }
        let changed = self
            .exec(
                &format!(
                    "UPDATE hl7_messages SET status = $3, last_error = COALESCE($4, last_error), next_attempt_at = NULL, \
                     updated_at = $5 WHERE tenant_id = $1 AND id = $2 AND status IN ({})",
                    placeholders.join(", ")
                ),
                values,
            )
            .await?;
        Ok(changed == 1)
    }

    /// Sets a message's status (and error) without an attempt, whatever it was.
    pub async fn set_hl7_status(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE hl7_messages SET status = $3, last_error = COALESCE($4, last_error), next_attempt_at = NULL, \
                 updated_at = $5 WHERE tenant_id = $1 AND id = $2",
                vec![
                    self.tenant.as_str().into(),
                    id.into(),
                    status.into(),
                    error.map(str::to_owned).into(),
                    now.into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Puts a dead or rejected outbound message back in the queue (replay): pending, due now,
    /// attempts reset. Acknowledged, cancelled and pending messages are not replayed: a second
    /// copy of an order the lab has would be performed twice.
    pub async fn requeue_hl7(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE hl7_messages SET status = 'pending', attempts = 0, next_attempt_at = $3, last_error = NULL, \
                 updated_at = $3 WHERE tenant_id = $1 AND id = $2 AND direction = 'out' \
                 AND status IN ('dead', 'rejected') AND endpoint_id <> ''",
                vec![self.tenant.as_str().into(), id.into(), now.into()],
            )
            .await?;
        Ok(changed == 1)
    }
}

/// Tables of m0004: the message log is tenant-scoped (row-level security); endpoints are read
/// across tenants to route inbound messages (grant only, like `oauth_clients`).
pub(crate) const LAB_TENANT_TABLES: &[&str] = &["hl7_messages"];
pub(crate) const LAB_SYSTEM_TABLES: &[&str] = &["lab_endpoints"];

pub(crate) const LAB_SCHEMA: &str = r#"
CREATE TABLE lab_endpoints (
    id               TEXT    NOT NULL PRIMARY KEY,
    tenant_id        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    lab_facility     TEXT    NOT NULL,
    lab_application  TEXT    NOT NULL,
    our_facility     TEXT    NOT NULL,
    our_application  TEXT    NOT NULL,
    transport        TEXT    NOT NULL,
    address          TEXT    NOT NULL,
    charset          TEXT    NOT NULL,
    organization     TEXT,
    is_default       INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    allowed_peers    TEXT    NOT NULL,
    active           INTEGER NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    last_outbound_at BIGINT,
    last_inbound_at  BIGINT,
    last_error       TEXT
);
CREATE UNIQUE INDEX lab_endpoints_route ON lab_endpoints (lab_facility, our_facility);
CREATE INDEX lab_endpoints_tenant ON lab_endpoints (tenant_id);

CREATE TABLE hl7_messages (
    tenant_id       TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    endpoint_id     TEXT    NOT NULL,
    direction       TEXT    NOT NULL,
    message_type    TEXT    NOT NULL,
    control_id      TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at BIGINT,
    last_error      TEXT,
    subject         TEXT,
    payload         TEXT    NOT NULL,
    reply           TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX hl7_messages_control ON hl7_messages (tenant_id, endpoint_id, direction, control_id);
CREATE INDEX hl7_messages_due ON hl7_messages (tenant_id, status, next_attempt_at);
CREATE INDEX hl7_messages_subject ON hl7_messages (tenant_id, subject);
CREATE UNIQUE INDEX hl7_messages_one_order ON hl7_messages (tenant_id, subject)
    WHERE direction = 'out' AND message_type = 'OML^O33'
"#;

/// m0007: the trace context of each message (a W3C `traceparent`, at most 55 characters; ids
/// only, no PHI).
pub(crate) const HL7_TRACE_SCHEMA: &str = "ALTER TABLE hl7_messages ADD COLUMN trace TEXT";
