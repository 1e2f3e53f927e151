//! The plaintext of an archive: one JSON record per line, tagged by `record`, in section order.
//!
//! ```text
//! {"record":"tenant","id":"h1","name":"…","active":true,"created_at":1767225600}
//! {"record":"client","client_id":"h1-cli",…}                 OAuth clients
//! {"record":"lab_endpoint","id":"…",…}                       lab endpoints
//! {"record":"user","id":"…","password_hash":"$argon2id$…","mfa_secret":"v1:…",…}
//! {"record":"recovery_code","user_id":"…","code_hash":"…","used_at":null}
//! {"record":"resource","type":"Patient","id":"…","version":3,"last_updated":…,"deleted":false,"content":"{…}"}
//! {"record":"history","type":"Patient","id":"…","version":1,"last_updated":…,"method":"POST","deleted":false,"content":"{…}"}
//! {"record":"audit_link","seq":1,"resource_id":"…","hash":"…","event":{"version":1,"last_updated":…,"deleted":false,"content":"{…}"}}
//! {"record":"audit_head","seq":…,"hash":"…"}
//! ```

use crate::archive::Header;
use crate::error::BackupError;
use ehr_store::AuditVerification;
use ehr_store::backup::{
    AuditHeadRow, AuditLinkRow, BackupCounts, ChainCheck, ClientRow, HistoryRow, LabEndpointRow, RecoveryCodeRow,
    ResourceRow, TenantRow, UserRow,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One line of the record stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Tenant(TenantRow),
    Client(ClientRow),
    LabEndpoint(LabEndpointRow),
    User(UserRow),
    RecoveryCode(RecoveryCodeRow),
    Resource(ResourceRow),
    History(HistoryRow),
    AuditLink(AuditLinkRow),
    AuditHead(AuditHeadRow),
}

impl Record {
    /// The section's position in the stream; records come in non-decreasing order of it.
    fn rank(&self) -> u8 {
        match self {
            Self::Tenant(_) => 0,
            Self::Client(_) => 1,
            Self::LabEndpoint(_) => 2,
            Self::User(_) => 3,
            Self::RecoveryCode(_) => 4,
            Self::Resource(_) => 5,
            Self::History(_) => 6,
            Self::AuditLink(_) => 7,
            Self::AuditHead(_) => 8,
        }
    }

    /// The record as one line (with its `\n`).
    pub fn to_line(&self) -> Result<Vec<u8>, BackupError> {
        let mut line =
            serde_json::to_vec(self).map_err(|_| BackupError::Corrupt("a record is not serialisable".into()))?;
        line.push(b'\n');
        Ok(line)
    }

    /// Parses line number `line`.
    pub fn parse(bytes: &[u8], line: u64) -> Result<Self, BackupError> {
        serde_json::from_slice(bytes).map_err(|e| BackupError::record(line, &e))
    }
}

/// Checks a stored resource version: deleted versions are empty, the others a JSON object of
/// their type and id.
fn check_content(line: u64, ty: &str, id: &str, deleted: bool, content: &str) -> Result<(), BackupError> {
    let bad = |what: &str| BackupError::Record { line, what: what.to_owned() };
    if deleted {
        return if content.is_empty() { Ok(()) } else { Err(bad("a deleted version has content")) };
    }
    let json: Json = serde_json::from_str(content).map_err(|_| bad("the resource is not JSON"))?;
    if json.get("resourceType").and_then(Json::as_str) != Some(ty) || json.get("id").and_then(Json::as_str) != Some(id)
    {
        return Err(bad("the resource's type or id differs from its record"));
    }
    Ok(())
}

/// The result of checking an archive's content.
#[derive(Debug, Clone)]
pub struct Checked {
    pub header: Header,
    /// The records found, by section (equal to the header's).
    pub counts: BackupCounts,
    /// The audit chain as the archive holds it, checked with `ehr audit verify`'s rules.
    pub audit: AuditVerification,
    /// SHA-256 of the whole file.
    pub sha256: String,
    /// The clients and lab endpoints (a restore checks they are free in the target).
    pub clients: Vec<ClientRow>,
    pub lab_endpoints: Vec<LabEndpointRow>,
}

/// Checks records one by one, in one pass: section order, one tenant record naming the
/// header's tenant, resource content, the audit chain, and at the end the counts.
pub(crate) struct ContentCheck {
    tenant: String,
    rank: u8,
    counts: BackupCounts,
    chain: ChainCheck,
    head: Option<AuditHeadRow>,
    clients: Vec<ClientRow>,
    lab_endpoints: Vec<LabEndpointRow>,
}

impl ContentCheck {
    pub fn new(header: &Header) -> Self {
        Self {
            tenant: header.tenant.clone(),
            rank: 0,
            counts: BackupCounts::default(),
            chain: ChainCheck::new(),
            head: None,
            clients: Vec::new(),
            lab_endpoints: Vec::new(),
        }
    }

    /// Takes record number `line`.
    pub fn record(&mut self, line: u64, record: &Record) -> Result<(), BackupError> {
        let bad = |what: &str| BackupError::Record { line, what: what.to_owned() };
        let rank = record.rank();
        if rank < self.rank {
            return Err(bad("is out of section order"));
        }
        self.rank = rank;
        let c = &mut self.counts;
        match record {
            Record::Tenant(t) => {
                if c.tenant > 0 {
                    return Err(bad("is a second tenant record"));
                }
                if t.id != self.tenant {
                    return Err(bad("names another tenant than the header"));
                }
                c.tenant += 1;
            }
            Record::Client(client) => {
                c.clients += 1;
                self.clients.push(client.clone());
            }
            Record::LabEndpoint(e) => {
                c.lab_endpoints += 1;
                self.lab_endpoints.push(e.clone());
            }
            Record::User(_) => c.users += 1,
            Record::RecoveryCode(_) => c.recovery_codes += 1,
            Record::Resource(r) => {
                check_content(line, &r.resource_type, &r.id, r.deleted, &r.content)?;
                if r.resource_type == "AuditEvent" {
                    self.chain.unchained(&r.id);
                }
                c.resources += 1;
            }
            Record::History(h) => {
                check_content(line, &h.resource_type, &h.id, h.deleted, &h.content)?;
                c.history += 1;
            }
            Record::AuditLink(link) => {
                if let Some(e) = &link.event {
                    check_content(line, "AuditEvent", &link.resource_id, e.deleted, &e.content)?;
                    c.audit_events += 1;
                }
                self.chain.link(link);
                c.audit_links += 1;
            }
            Record::AuditHead(h) => {
                if c.audit_head > 0 {
                    return Err(bad("is a second audit head"));
                }
                self.head = Some(h.clone());
                c.audit_head += 1;
            }
        }
        Ok(())
    }

    /// Compares the counts with the header's and finishes the chain check.
    pub fn finish(self, header: &Header, sha256: String) -> Result<Checked, BackupError> {
        let (h, f) = (&header.counts, &self.counts);
        let pairs = [
            ("tenant", h.tenant, f.tenant),
            ("client", h.clients, f.clients),
            ("lab endpoint", h.lab_endpoints, f.lab_endpoints),
            ("user", h.users, f.users),
            ("recovery code", h.recovery_codes, f.recovery_codes),
            ("resource", h.resources, f.resources),
            ("history", h.history, f.history),
            ("audit link", h.audit_links, f.audit_links),
            ("audit event", h.audit_events, f.audit_events),
            ("audit head", h.audit_head, f.audit_head),
        ];
        if let Some((section, header, found)) = pairs.into_iter().find(|(_, h, f)| h != f) {
            return Err(BackupError::CountMismatch { section, header, found });
        }
        let audit = self.chain.finish(self.head.as_ref());
        let head = self.head.as_ref();
        if header.audit.seq != head.map_or(0, |h| h.seq)
            || (head.is_some() && Some(header.audit.hash.as_str()) != head.map(|h| h.hash.as_str()))
        {
            return Err(BackupError::Corrupt("the header's audit head differs from the archived one".into()));
        }
        Ok(Checked {
            header: header.clone(),
            counts: self.counts,
            audit,
            sha256,
            clients: self.clients,
            lab_endpoints: self.lab_endpoints,
        })
    }
}
