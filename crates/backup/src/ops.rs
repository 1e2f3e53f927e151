//! The three operations: write a tenant's archive from the database, verify an archive, and
//! restore one into a database where the tenant has no data.

use crate::archive::{ArchiveWriter, AuditSummary, Database, Decryptor, Header, Lines, Scanned, Written, scan};
use crate::error::BackupError;
use crate::key::{BackupKey, KdfCosts, Secret};
use crate::record::{Checked, ContentCheck, Record};
use chrono::{DateTime, Utc};
use ehr_core::{TenantContext, TenantId};
use ehr_store::backup::{
    AuditLinkRow, ClientRow, HistoryRow, LabEndpointRow, Occupancy, RecoveryCodeRow, ResourceRow, Snapshot, UserRow,
};
use ehr_store::{AuditVerification, Store};
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

/// Rows read per statement while dumping.
const PAGE: u64 = 500;
/// Rows written per batch while restoring, and the content bytes after which a batch is
/// written earlier.
const BATCH_ROWS: usize = 500;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The subject a backup or restore acts as (no request, no user).
const ACTOR: &str = "ehr-backup";

/// What [`create`] is to do.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub tenant: TenantId,
    pub secret: Secret,
    /// The archive's `created_at`.
    pub now: DateTime<Utc>,
    /// Write the archive even when the tenant's audit chain does not verify (it is then
    /// recorded as it is, and a restore needs the same permission).
    pub allow_broken_audit: bool,
    pub kdf_costs: KdfCosts,
    /// Which database of the deployment the store is (recorded in the header; decides the
    /// warnings).
    pub database: Database,
}

/// What [`create`] wrote.
#[derive(Debug, Clone)]
pub struct Created {
    pub header: Header,
    pub written: Written,
    /// The audit chain at the backup's instant.
    pub audit: AuditVerification,
    /// Sections that look missing or misplaced for the database ([`Database::warnings`]).
    pub warnings: Vec<String>,
}

/// Writes the archive of one tenant to `out`: everything read in one snapshot, page by page,
/// each record checked as a restore will check it.
pub async fn create<W: Write>(store: &Store, out: W, opts: &CreateOptions) -> Result<(Created, W), BackupError> {
    let ctx = TenantContext::new(opts.tenant.clone(), ACTOR);
    let snap = store.snapshot(&ctx).await?;
    let counts = snap.counts().await?;
    if counts.is_empty() {
        return Err(BackupError::NoSuchTenant(opts.tenant.as_str().to_owned()));
    }
    let audit = snap.verify_audit_chain().await?;
    if !audit.is_ok() && !opts.allow_broken_audit {
        return Err(chain_error(opts.tenant.as_str(), &audit));
    }
    let head = snap.audit_head().await?;
    let (key, kdf) = opts.secret.for_writing(opts.kdf_costs)?;
    let summary = AuditSummary {
        seq: head.as_ref().map_or(0, |h| h.seq),
        hash: head.as_ref().map_or_else(|| "0".repeat(64), |h| h.hash.clone()),
        verified: audit.is_ok(),
        problems: audit.problems.len() as u64,
    };
    let mut header = Header::new(opts.tenant.as_str(), opts.now, snap.backend_name(), counts, summary, &key, kdf);
    header.database = opts.database;
    let mut sink = Sink { writer: ArchiveWriter::new(out, &header, &key)?, check: ContentCheck::new(&header), line: 0 };
    dump(&snap, &mut sink).await?;
    if let Some(h) = head {
        sink.put(Record::AuditHead(h))?;
    }
    snap.finish().await?;
    let Sink { writer, check, .. } = sink;
    let checked = check.finish(&header, String::new())?;
    // The chain as streamed must verify exactly as the database's check did in that snapshot.
    if !same_findings(&checked.audit, &audit) {
        return Err(BackupError::Corrupt("the audit chain read for the archive differs from its verification".into()));
    }
    let (written, out) = writer.finish()?;
    // The export goes into the tenant's audit trail, in a short transaction of its own (the
    // snapshot is read-only); the clinical database of microservices mode holds no chain.
    if opts.database != Database::Clinical {
        let tx = store.write(&ctx).await?;
        tx.append_audit(vec![audit_event(&header, &written.sha256, Event::Backup, opts.now)], opts.now).await?;
        tx.commit().await?;
    }
    let warnings = opts.database.warnings(&header.counts);
    Ok((Created { header, written, audit, warnings }, out))
}

/// The archive being written, and the check of what goes in.
struct Sink<W: Write> {
    writer: ArchiveWriter<W>,
    check: ContentCheck,
    line: u64,
}

impl<W: Write> Sink<W> {
    fn put(&mut self, record: Record) -> Result<(), BackupError> {
        self.line += 1;
        self.check.record(self.line, &record)?;
        self.writer.write_all(&record.to_line()?)
    }
}

/// Streams every section but the head, in order.
async fn dump<W: Write>(snap: &Snapshot, sink: &mut Sink<W>) -> Result<(), BackupError> {
    if let Some(t) = snap.tenant_row().await? {
        sink.put(Record::Tenant(t))?;
    }
    for c in snap.clients().await? {
        sink.put(Record::Client(c))?;
    }
    for e in snap.lab_endpoints().await? {
        sink.put(Record::LabEndpoint(e))?;
    }
    let mut after = String::new();
    loop {
        let page = snap.users(&after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after.clone_from(&last.id);
        let full = page.len() as u64 == PAGE;
        for u in page {
            sink.put(Record::User(u))?;
        }
        if !full {
            break;
        }
    }
    let mut after = (String::new(), String::new());
    loop {
        let page = snap.recovery_codes((&after.0, &after.1), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.user_id.clone(), last.code_hash.clone());
        let full = page.len() as u64 == PAGE;
        for c in page {
            sink.put(Record::RecoveryCode(c))?;
        }
        if !full {
            break;
        }
    }
    let mut after = (String::new(), String::new());
    loop {
        let page = snap.resources((&after.0, &after.1), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.resource_type.clone(), last.id.clone());
        let full = page.len() as u64 == PAGE;
        for r in page {
            sink.put(Record::Resource(r))?;
        }
        if !full {
            break;
        }
    }
    let mut after = (String::new(), String::new(), 0_i64);
    loop {
        let page = snap.history((&after.0, &after.1, after.2), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = (last.resource_type.clone(), last.id.clone(), last.version);
        let full = page.len() as u64 == PAGE;
        for h in page {
            sink.put(Record::History(h))?;
        }
        if !full {
            break;
        }
    }
    let mut after = i64::MIN;
    loop {
        let page = snap.audit_links(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() as u64 == PAGE;
        for l in page {
            sink.put(Record::AuditLink(l))?;
        }
        if !full {
            break;
        }
    }
    Ok(())
}

fn chain_error(tenant: &str, audit: &AuditVerification) -> BackupError {
    BackupError::AuditChain {
        tenant: tenant.to_owned(),
        problems: audit.problems.len(),
        first: audit.problems.first().map(|p| format!("{p:?}")).unwrap_or_default(),
    }
}

/// What [`verify`] established.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Structure and checksum.
    pub scanned: Scanned,
    /// With the key: every chunk authenticated, every record parsed and checked, counts and
    /// the audit chain.
    pub checked: Option<Checked>,
}

/// Verifies an archive file: structure and checksum (and `expect_sha256`, the value recorded
/// when it was written); with a key, also every chunk, every record, the counts and the audit
/// chain.
pub fn verify(
    path: &Path,
    secret: Option<&Secret>,
    expect_tenant: Option<&str>,
    expect_sha256: Option<&str>,
) -> Result<Verified, BackupError> {
    let scanned = scan(BufReader::new(File::open(path)?))?;
    if let Some(expected) = expect_sha256
        && !expected.trim().eq_ignore_ascii_case(&scanned.sha256)
    {
        return Err(BackupError::UnexpectedChecksum { expected: expected.trim().to_owned(), actual: scanned.sha256 });
    }
    if let Some(expected) = expect_tenant
        && expected != scanned.header.tenant
    {
        return Err(BackupError::WrongTenant { expected: expected.to_owned(), found: scanned.header.tenant });
    }
    let checked = match secret {
        None => None,
        Some(secret) => {
            let key = secret.for_reading(scanned.header.kdf.as_ref(), &scanned.header.key_id)?;
            Some(check_file(path, &key, expect_tenant, &scanned)?)
        }
    };
    Ok(Verified { scanned, checked })
}

fn open(path: &Path, key: &BackupKey, expect_tenant: Option<&str>) -> Result<Lines<BufReader<File>>, BackupError> {
    let file = BufReader::new(File::open(path)?);
    Ok(Lines::new(Decryptor::open(file, expect_tenant, |_| Ok(key.clone()))?))
}

/// Decrypts and checks every record of the file.
fn check_file(
    path: &Path,
    key: &BackupKey,
    expect_tenant: Option<&str>,
    scanned: &Scanned,
) -> Result<Checked, BackupError> {
    let mut lines = open(path, key, expect_tenant)?;
    let header = lines.header().clone();
    let mut check = ContentCheck::new(&header);
    while let Some(bytes) = lines.next_line()? {
        let n = lines.line();
        check.record(n, &Record::parse(&bytes, n)?)?;
    }
    let sha256 = same_file(lines.sha256(), scanned)?;
    check.finish(&header, sha256)
}

/// The file's checksum after a pass, which must be the one of the first pass: a file replaced
/// between passes is not restored.
fn same_file(sha256: Option<&str>, scanned: &Scanned) -> Result<String, BackupError> {
    match sha256 {
        Some(s) if s == scanned.sha256 => Ok(s.to_owned()),
        _ => Err(BackupError::Corrupt("the file changed while it was being read".into())),
    }
}

/// What [`restore`] is to do.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub secret: Secret,
    /// Refuse an archive of another tenant.
    pub expect_tenant: Option<TenantId>,
    /// The SHA-256 recorded off-line when the archive was written: compared with the file's
    /// before the key is derived.
    pub expect_sha256: Option<String>,
    /// Which database of the deployment the target is: the archive must have been read from
    /// the same kind.
    pub database: Database,
    /// Restore an archive whose audit chain does not verify (as it is).
    pub allow_broken_audit: bool,
    /// When the restore's AuditEvent is recorded.
    pub now: DateTime<Utc>,
}

/// An archive verified whole by [`prepare_restore`], ready for [`restore`]: nothing of the
/// database has been touched yet.
#[derive(Debug)]
pub struct Prepared {
    path: PathBuf,
    key: BackupKey,
    scanned: Scanned,
    tenant: TenantId,
    now: DateTime<Utc>,
    pub checked: Checked,
}

impl Prepared {
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
}

/// What [`restore`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub checked: Checked,
    /// The tenant's audit chain verified in the database, in the restore's transaction.
    pub audit_after: AuditVerification,
}

/// The first half of a restore, without a database: structure and checksum (and the recorded
/// checksum), tenant, database kind, then the key, every chunk, every record, the counts and
/// the audit chain — [`verify`]'s checks. A caller connects to (and so migrates) the target
/// only once this succeeded.
pub fn prepare_restore(path: &Path, opts: &RestoreOptions) -> Result<Prepared, BackupError> {
    let expect = opts.expect_tenant.as_ref().map(TenantId::as_str);
    let scanned = scan(BufReader::new(File::open(path)?))?;
    if let Some(expected) = &opts.expect_sha256
        && !expected.trim().eq_ignore_ascii_case(&scanned.sha256)
    {
        return Err(BackupError::UnexpectedChecksum { expected: expected.trim().to_owned(), actual: scanned.sha256 });
    }
    if let Some(expected) = expect
        && expected != scanned.header.tenant
    {
        return Err(BackupError::WrongTenant { expected: expected.to_owned(), found: scanned.header.tenant });
    }
    if scanned.header.database != opts.database {
        return Err(BackupError::WrongDatabase {
            archive: scanned.header.database.name(),
            target: opts.database.name(),
        });
    }
    let key = opts.secret.for_reading(scanned.header.kdf.as_ref(), &scanned.header.key_id)?;
    let checked = check_file(path, &key, expect, &scanned)?;
    if !checked.audit.is_ok() && !opts.allow_broken_audit {
        return Err(chain_error(&checked.header.tenant, &checked.audit));
    }
    let tenant = TenantId::parse(&checked.header.tenant)
        .map_err(|_| BackupError::BadHeader("the tenant id is not valid".into()))?;
    Ok(Prepared { path: path.to_owned(), key, scanned, tenant, now: opts.now, checked })
}

/// Restores an archive [`prepare_restore`] verified: checks that the tenant has no data in the
/// target database and that its client ids and lab routes are free, then writes every record
/// in one transaction (reading the file again, every chunk authenticated again, the file's
/// checksum compared with the verified one), verifies the audit chain in that transaction, and
/// commits. Any failure leaves the database as it was.
pub async fn restore(store: &Store, prepared: &Prepared) -> Result<Restored, BackupError> {
    let Prepared { path, key, scanned, tenant, now, checked } = prepared;
    let tx = store.begin_restore(&TenantContext::new(tenant.clone(), ACTOR)).await?;
    let occupancy = tx.occupancy(&checked.clients, &checked.lab_endpoints).await?;
    if !occupancy.is_free() {
        return Err(BackupError::TenantExists { tenant: tenant.as_str().to_owned(), what: describe(&occupancy) });
    }

    let mut lines = open(path, key, Some(tenant.as_str()))?;
    let header = lines.header().clone();
    if header != checked.header {
        return Err(BackupError::Corrupt("the file changed while it was being read".into()));
    }
    let mut check = ContentCheck::new(&header);
    let mut batch = Batch::default();
    while let Some(bytes) = lines.next_line()? {
        let n = lines.line();
        let record = Record::parse(&bytes, n)?;
        check.record(n, &record)?;
        batch.add(&tx, record).await?;
    }
    batch.flush(&tx).await?;
    // A file replaced since the verification (even by another valid archive of the tenant,
    // under the same key) differs in its checksum: the transaction is dropped, nothing stays.
    let sha256 = same_file(lines.sha256(), scanned)?;
    let again = check.finish(&header, sha256)?;
    if again.audit != checked.audit {
        return Err(BackupError::Corrupt("the file changed while it was being read".into()));
    }
    let audit_after = tx.verify_audit_chain().await?;
    if !same_findings(&audit_after, &checked.audit) {
        return Err(BackupError::RestoreCheck(format!(
            "the audit chain shows {} problem(s) where the archive shows {}",
            audit_after.problems.len(),
            checked.audit.problems.len()
        )));
    }
    // The restore's own record chains on from the restored head, in the same transaction.
    if checked.header.database != Database::Clinical {
        tx.append_audit(vec![audit_event(&checked.header, &checked.sha256, Event::Restore, *now)], *now).await?;
    }
    tx.commit().await?;
    Ok(Restored { checked: checked.clone(), audit_after })
}

/// What an archive's AuditEvent records.
#[derive(Clone, Copy)]
enum Event {
    Backup,
    Restore,
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";

fn coding(system: &str, code: &str, display: &str) -> serde_json::Value {
    serde_json::json!({"system": system, "code": code, "display": display})
}

/// The AuditEvent of a backup (DICOM Export, action E) or a restore (DICOM Import, action C),
/// in the gateway's BALP style: the actor is `ehr-backup`, the entity the archive (by its
/// SHA-256, the value of the off-line register), the description its tenant, database kind and
/// counts. No patient data.
fn audit_event(header: &Header, sha256: &str, event: Event, now: DateTime<Utc>) -> serde_json::Value {
    let (ty, subtype, action, what) = match event {
        Event::Backup => (coding(DCM, "110106", "Export"), "backup-create", "E", "written"),
        Event::Restore => (coding(DCM, "110107", "Import"), "backup-restore", "C", "restored"),
    };
    let c = &header.counts;
    serde_json::json!({
        "resourceType": "AuditEvent",
        "type": ty,
        "subtype": [coding("urn:ehr:audit-event-subtype", subtype, subtype)],
        "action": action,
        "recorded": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "outcome": "0",
        "outcomeDesc": format!(
            "backup archive of tenant {} ({} database, created {}) {what}: {} users, {} resources, {} history \
             versions, {} audit events",
            header.tenant, header.database.name(), header.created_at, c.users, c.resources, c.history, c.audit_links
        ),
        "agent": [{
            "type": {"coding": [coding(DCM, "110153", "Source Role ID")]},
            "who": {"display": ACTOR},
            "requestor": true,
        }],
        "source": {
            "site": header.tenant,
            "observer": {"display": ACTOR},
            "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
        },
        "entity": [{
            "what": {"identifier": {"system": "urn:ehr:backup-archive-sha256", "value": sha256}},
            "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
            "role": coding("http://terminology.hl7.org/CodeSystem/object-role", "17", "Data Repository"),
        }],
    })
}

/// Whether two checks of a chain found the same: unchained events are listed in the id order
/// of each database's collation, so the findings are compared as sets.
fn same_findings(a: &AuditVerification, b: &AuditVerification) -> bool {
    let sorted = |v: &AuditVerification| {
        let mut p: Vec<String> = v.problems.iter().map(|p| format!("{p:?}")).collect();
        p.sort();
        p
    };
    a.checked == b.checked && sorted(a) == sorted(b)
}

/// What of the tenant the target holds, for the refusal's message.
fn describe(o: &Occupancy) -> String {
    let t = &o.tenant_rows;
    let mut parts = Vec::new();
    if t.tenant > 0 {
        parts.push("it is registered".to_owned());
    }
    for (n, what) in [
        (t.resources, "resources"),
        (t.history, "versions"),
        (t.users, "users"),
        (t.recovery_codes, "recovery codes"),
        (t.clients, "OAuth clients"),
        (t.lab_endpoints, "lab endpoints"),
        (t.audit_links, "audit events"),
        (o.other_rows, "rows of events, messages, exports or submissions"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if t.audit_head > 0 && t.audit_links == 0 {
        parts.push("an audit chain head".to_owned());
    }
    if !o.taken_clients.is_empty() {
        parts.push(format!("client id(s) {} taken", o.taken_clients.join(", ")));
    }
    if !o.taken_lab_endpoints.is_empty() {
        parts.push(format!("lab endpoint(s) {} (id or facility pair) taken", o.taken_lab_endpoints.join(", ")));
    }
    parts.join(", ")
}

/// Records waiting to be written, of one section at a time.
#[derive(Default)]
struct Batch {
    users: Vec<UserRow>,
    codes: Vec<RecoveryCodeRow>,
    resources: Vec<ResourceRow>,
    history: Vec<HistoryRow>,
    links: Vec<AuditLinkRow>,
    bytes: usize,
}

impl Batch {
    async fn add(&mut self, tx: &ehr_store::backup::Restore, record: Record) -> Result<(), BackupError> {
        // Sections come in order and `flush` writes pending rows in section order: users are
        // written before their recovery codes, resources before history, whatever the batches.
        match record {
            Record::Tenant(t) => tx.insert_tenant(&t).await?,
            Record::Client(c) => tx.insert_clients(std::slice::from_ref::<ClientRow>(&c)).await?,
            Record::LabEndpoint(e) => tx.insert_lab_endpoints(std::slice::from_ref::<LabEndpointRow>(&e)).await?,
            Record::User(u) => self.users.push(u),
            Record::RecoveryCode(c) => self.codes.push(c),
            Record::Resource(r) => {
                self.bytes += r.content.len();
                self.resources.push(r);
            }
            Record::History(h) => {
                self.bytes += h.content.len();
                self.history.push(h);
            }
            Record::AuditLink(l) => {
                self.bytes += l.event.as_ref().map_or(0, |e| e.content.len());
                self.links.push(l);
            }
            Record::AuditHead(h) => {
                self.flush(tx).await?;
                tx.insert_audit_head(&h).await?;
            }
        }
        if self.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES {
            self.flush(tx).await?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.users.len() + self.codes.len() + self.resources.len() + self.history.len() + self.links.len()
    }

    async fn flush(&mut self, tx: &ehr_store::backup::Restore) -> Result<(), BackupError> {
        // Users before their recovery codes, as the sections come.
        tx.insert_users(&std::mem::take(&mut self.users)).await?;
        tx.insert_recovery_codes(&std::mem::take(&mut self.codes)).await?;
        tx.insert_resources(&std::mem::take(&mut self.resources)).await?;
        tx.insert_history(&std::mem::take(&mut self.history)).await?;
        tx.insert_audit_links(&std::mem::take(&mut self.links)).await?;
        self.bytes = 0;
        Ok(())
    }
}
