//! The archive format against damage and tampering: round trip, a flipped byte anywhere,
//! truncation, reordered and appended chunks, a wrong key, a wrong tenant; and the content
//! checks (counts, section order, the audit chain).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::archive::{AuditSummary, Database, Decryptor, Header, Lines, scan};
use crate::key::{BackupKey, KdfCosts, Secret};
use crate::record::{ContentCheck, Record};
use crate::{BackupError, verify};
use chrono::DateTime;
use ehr_store::backup::{
    AuditEventRow, AuditHeadRow, AuditLinkRow, BackupCounts, ClientRow, HistoryRow, LabEndpointRow, RecoveryCodeRow,
    ResourceRow, TenantRow, UserRow,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

fn summary() -> AuditSummary {
    AuditSummary { seq: 0, hash: "0".repeat(64), verified: true, problems: 0 }
}

/// A header of tenant `h1` with tiny chunks, so that short streams span many of them.
fn header(key: &BackupKey, chunk_size: u32) -> Header {
    let now = DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let mut h = Header::new("h1", now, "sqlite", BackupCounts::default(), summary(), key, None);
    h.chunk_size = chunk_size;
    h
}

/// An archive of `lines` (each written with its newline).
fn archive(key: &BackupKey, header: &Header, lines: &[&str]) -> Vec<u8> {
    let mut w = crate::archive::ArchiveWriter::new(Vec::new(), header, key).unwrap();
    for l in lines {
        w.write_all(l.as_bytes()).unwrap();
        w.write_all(b"\n").unwrap();
    }
    let (written, bytes) = w.finish().unwrap();
    assert_eq!(written.bytes, bytes.len() as u64);
    assert_eq!(written.sha256, crate::hex(&Sha256::digest(&bytes)), "the printed checksum is sha256sum's");
    bytes
}

/// Every line, decrypted and authenticated, with the trailer checked.
fn read(bytes: &[u8], key: &BackupKey, tenant: Option<&str>) -> Result<Vec<String>, BackupError> {
    let dec = Decryptor::open(bytes, tenant, |h| Secret::Key(key.clone()).for_reading(h.kdf.as_ref(), &h.key_id))?;
    let mut lines = Lines::new(dec);
    let mut out = Vec::new();
    while let Some(l) = lines.next_line()? {
        out.push(String::from_utf8(l).unwrap());
    }
    assert!(lines.sha256().is_some());
    Ok(out)
}

const LINES: [&str; 6] = [
    "{\"kind\":\"first\"}",
    "a line longer than one chunk of thirty-two bytes, so that it spans two or three",
    "",
    "short",
    "日本語の行: multi-byte text across chunk boundaries is cut anywhere",
    "the last line",
];

/// The parts of an archive: preamble, frames (flag, ciphertext), trailer.
struct Parts {
    header_json: Vec<u8>,
    frames: Vec<(u8, Vec<u8>)>,
}

fn split(bytes: &[u8]) -> Parts {
    let len = u32::from_be_bytes(bytes[10..14].try_into().unwrap()) as usize;
    let header_json = bytes[14..14 + len].to_vec();
    let mut pos = 14 + len;
    let mut frames = Vec::new();
    loop {
        let flag = bytes[pos];
        let n = u32::from_be_bytes(bytes[pos + 1..pos + 5].try_into().unwrap()) as usize;
        frames.push((flag, bytes[pos + 5..pos + 5 + n].to_vec()));
        pos += 5 + n;
        if flag == 1 {
            break;
        }
    }
    assert_eq!(bytes.len() - pos, 40, "trailer");
    Parts { header_json, frames }
}

/// Reassembles parts with a correct trailer: what someone who rewrites the file can do.
fn join(parts: &Parts) -> Vec<u8> {
    let mut out = crate::archive::MAGIC.to_vec();
    out.extend_from_slice(&crate::archive::VERSION.to_be_bytes());
    out.extend_from_slice(&(parts.header_json.len() as u32).to_be_bytes());
    out.extend_from_slice(&parts.header_json);
    for (flag, ct) in &parts.frames {
        out.push(*flag);
        out.extend_from_slice(&(ct.len() as u32).to_be_bytes());
        out.extend_from_slice(ct);
    }
    out.extend_from_slice(&crate::archive::TRAILER_MAGIC);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The checksum at the end recomputed over the (altered) bytes before it.
fn fix_checksum(bytes: &mut [u8]) {
    let n = bytes.len();
    let sum = Sha256::digest(&bytes[..n - 32]);
    bytes[n - 32..].copy_from_slice(&sum);
}

#[test]
fn an_archive_round_trips_across_chunks() {
    let key = BackupKey::generate();
    let h = header(&key, 32);
    let bytes = archive(&key, &h, &LINES);
    let parts = split(&bytes);
    assert!(parts.frames.len() > 5, "{} chunks", parts.frames.len());
    assert_eq!(read(&bytes, &key, Some("h1")).unwrap(), LINES);
    let scanned = scan(&bytes[..]).unwrap();
    assert_eq!(scanned.header, h);
    assert_eq!(scanned.chunks, parts.frames.len() as u64);
    // Nothing of the plaintext shows in the file.
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("last line") && !text.contains("short"));
    // An empty stream is one empty last chunk; a stream of exactly one chunk is one last chunk.
    assert_eq!(read(&archive(&key, &h, &[]), &key, None).unwrap(), Vec::<String>::new());
    let exact = "x".repeat(31);
    let one = archive(&key, &h, &[exact.as_str()]);
    assert_eq!(split(&one).frames.len(), 1);
    assert_eq!(read(&one, &key, None).unwrap(), [exact]);
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    let key = BackupKey::generate();
    let bytes = archive(&key, &header(&key, 32), &LINES);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        // Without the key, by the checksum.
        assert!(scan(&bad[..]).is_err(), "scan accepted a flip at {i}");
        // With the key, by the checksum or an authentication.
        assert!(read(&bad, &key, None).is_err(), "read accepted a flip at {i}");
        // And when the checksum was recomputed by whoever flipped it, by the authentication.
        if i < bytes.len() - 32 {
            fix_checksum(&mut bad);
            let err = read(&bad, &key, None).expect_err("a deliberate flip is found");
            assert!(!matches!(err, BackupError::Checksum), "flip at {i}: {err}");
        }
    }
}

#[test]
fn a_truncated_archive_is_refused() {
    let key = BackupKey::generate();
    let bytes = archive(&key, &header(&key, 32), &LINES);
    for len in 0..bytes.len() {
        assert!(scan(&bytes[..len]).is_err(), "scan accepted {len} of {} bytes", bytes.len());
        assert!(read(&bytes[..len], &key, None).is_err(), "read accepted {len} of {} bytes", bytes.len());
    }
    // Cut after a whole chunk and dressed up as complete (the chunk flagged last, a trailer
    // with a correct checksum): the chunk was not sealed as the last one.
    let mut parts = split(&bytes);
    parts.frames.truncate(3);
    parts.frames[2].0 = 1;
    let forged = join(&parts);
    assert!(scan(&forged[..]).is_ok(), "the structure holds");
    assert!(matches!(read(&forged, &key, None), Err(BackupError::Authentication(2))));
}

#[test]
fn reordered_chunks_are_refused() {
    let key = BackupKey::generate();
    let bytes = archive(&key, &header(&key, 32), &LINES);
    let mut parts = split(&bytes);
    parts.frames.swap(1, 2);
    let swapped = join(&parts);
    assert!(scan(&swapped[..]).is_ok(), "the checksum was recomputed");
    assert!(matches!(read(&swapped, &key, None), Err(BackupError::Authentication(1))));
    // A chunk repeated in place of another fails the same way.
    let mut parts = split(&bytes);
    parts.frames[2] = parts.frames[1].clone();
    assert!(matches!(read(&join(&parts), &key, None), Err(BackupError::Authentication(2))));
}

#[test]
fn appended_data_is_refused() {
    let key = BackupKey::generate();
    let bytes = archive(&key, &header(&key, 32), &LINES);
    let mut longer = bytes.clone();
    longer.push(b'\n');
    assert!(matches!(scan(&longer[..]), Err(BackupError::Corrupt(_))));
    assert!(matches!(read(&longer, &key, None), Err(BackupError::Corrupt(_))));
    // A copied chunk after the last one, with the trailer rebuilt.
    let mut parts = split(&bytes);
    let extra = parts.frames[0].clone();
    let last = parts.frames.len() - 1;
    parts.frames[last].0 = 0;
    parts.frames.push(extra);
    parts.frames.last_mut().unwrap().0 = 1;
    let appended = join(&parts);
    assert!(read(&appended, &key, None).is_err());
}

#[test]
fn a_wrong_key_is_refused() {
    let key = BackupKey::generate();
    let other = BackupKey::generate();
    let bytes = archive(&key, &header(&key, 32), &LINES);
    match read(&bytes, &other, None) {
        Err(BackupError::WrongKey { expected, given }) => {
            assert_eq!((expected, given), (key.id(), other.id()));
        }
        other => panic!("{other:?}"),
    }
    // A header rewritten to name the wrong key's id: the first chunk does not open.
    let mut parts = split(&bytes);
    let text = String::from_utf8(parts.header_json.clone()).unwrap().replace(&key.id(), &other.id());
    parts.header_json = text.into_bytes();
    assert!(matches!(read(&join(&parts), &other, None), Err(BackupError::Authentication(0))));
    // The id is not the key.
    assert_eq!(key.id().len(), 16);
    assert!(!key.to_base64().contains(&key.id()));
}

#[test]
fn an_archive_of_another_tenant_is_refused() {
    let key = BackupKey::generate();
    let bytes = archive(&key, &header(&key, 32), &LINES);
    assert!(matches!(
        read(&bytes, &key, Some("h2")),
        Err(BackupError::WrongTenant { expected, found }) if expected == "h2" && found == "h1"
    ));
    // A header rewritten to name another tenant: every chunk is bound to the original header.
    let mut parts = split(&bytes);
    let text = String::from_utf8(parts.header_json.clone()).unwrap().replace("\"tenant\":\"h1\"", "\"tenant\":\"h2\"");
    parts.header_json = text.into_bytes();
    assert!(matches!(read(&join(&parts), &key, Some("h2")), Err(BackupError::Authentication(0))));
}

#[test]
fn keys_come_from_key_files_or_passphrases() {
    let key = BackupKey::generate();
    assert_eq!(BackupKey::from_base64(&format!("  {}\n", key.to_base64().as_str())).unwrap(), key);
    assert!(matches!(BackupKey::from_base64("not base64!"), Err(BackupError::InvalidKey(_))));
    assert!(matches!(BackupKey::from_base64("c2hvcnQ="), Err(BackupError::InvalidKey(_))));
    assert!(!format!("{key:?}").contains(key.to_base64().as_str()));

    let costs = KdfCosts { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
    let secret = Secret::Passphrase(Zeroizing::new("correct horse battery staple".to_owned()));
    assert!(!format!("{secret:?}").contains("horse"));
    assert!(Secret::Passphrase(Zeroizing::new("too short".to_owned())).for_writing(costs).is_err());
    let (derived, kdf) = secret.for_writing(costs).unwrap();
    let kdf = kdf.unwrap();
    assert_eq!((kdf.algorithm.as_str(), kdf.m_cost_kib), ("argon2id", 64));
    // The same passphrase and header give the same key; another passphrase does not.
    assert_eq!(secret.for_reading(Some(&kdf), &derived.id()).unwrap(), derived);
    assert!(matches!(
        Secret::Passphrase(Zeroizing::new("correct horse battery stapler".to_owned()))
            .for_reading(Some(&kdf), &derived.id()),
        Err(BackupError::WrongKey { .. })
    ));
    // A key file for a passphrase archive, and the reverse, are told apart.
    assert!(matches!(
        Secret::Key(key.clone()).for_reading(Some(&kdf), &derived.id()),
        Err(BackupError::KeyRequired(_))
    ));
    assert!(matches!(secret.for_reading(None, &key.id()), Err(BackupError::KeyRequired(_))));
    // A header cannot make the reader spend unbounded memory.
    let mut greedy = kdf.clone();
    greedy.m_cost_kib = u32::MAX;
    assert!(matches!(secret.for_reading(Some(&greedy), &derived.id()), Err(BackupError::BadHeader(_))));
    // Nor beyond 1 GiB, 10 passes, 8 lanes: refused before Argon2 runs (these would take long).
    for (m, t, p) in [(crate::MAX_M_COST_KIB + 1, 1, 1), (64, crate::MAX_T_COST + 1, 1), (64, 1, crate::MAX_P_COST + 1)]
    {
        let costly = crate::KdfParams { m_cost_kib: m, t_cost: t, p_cost: p, ..kdf.clone() };
        let started = std::time::Instant::now();
        let err = secret.for_reading(Some(&costly), &derived.id()).expect_err("over the limits");
        assert!(matches!(&err, BackupError::BadHeader(m) if m.contains("limits")), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
    }
}

/// The archive `parts` with its header JSON changed by `edit`, under a recomputed checksum.
fn with_header(parts: &Parts, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(&parts.header_json).unwrap();
    edit(&mut json);
    let edited = Parts { header_json: serde_json::to_vec(&json).unwrap(), frames: parts.frames.clone() };
    join(&edited)
}

#[test]
fn archives_of_a_newer_schema_or_with_unknown_fields_are_refused() {
    let key = BackupKey::generate();
    let h = header(&key, 32);
    assert_eq!(h.schema, ehr_store::backup::schema_level());
    assert!(h.schema >= 7);
    let parts = split(&archive(&key, &h, &LINES));
    // A newer ehr's archive: refused by its schema level, whatever else its header holds.
    let newer = with_header(&parts, |j| {
        j["schema"] = (h.schema + 1).into();
        j["app_version"] = "99.0.0".into();
        j["a_field_of_the_future"] = true.into();
    });
    let err = scan(&newer[..]).expect_err("newer");
    assert!(matches!(err, BackupError::NewerArchive { .. }), "{err}");
    assert!(err.to_string().contains("ehr 99.0.0") && err.to_string().contains("newer one"), "{err}");
    // The same level with a field this ehr does not know: not a header of this format.
    let unknown = with_header(&parts, |j| j["a_field_of_the_future"] = true.into());
    assert!(matches!(scan(&unknown[..]), Err(BackupError::BadHeader(_))));
    // An archive of before the schema level was recorded reads as level 0, database `all`.
    let old = with_header(&parts, |j| {
        let o = j.as_object_mut().unwrap();
        o.remove("schema");
        o.remove("database");
    });
    let scanned = scan(&old[..]).unwrap();
    assert_eq!((scanned.header.schema, scanned.header.database), (0, Database::All));
    // Records with a field this ehr does not know are refused, by number.
    let user = Record::User(UserRow {
        id: "u1".into(),
        username: "doctor".into(),
        display_name: "医師".into(),
        password_hash: "$argon2id$…".into(),
        roles: "[\"physician\"]".into(),
        active: true,
        created_at: 1,
        updated_at: 1,
        last_login_at: None,
        mfa_secret: None,
        mfa_confirmed: false,
        mfa_last_step: None,
        fhir_user: None,
    });
    let line = user.to_line().unwrap();
    let mut json: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(Record::parse(&serde_json::to_vec(&json).unwrap(), 1).unwrap(), user);
    json["department"] = "内科".into();
    let err = Record::parse(&serde_json::to_vec(&json).unwrap(), 4).expect_err("unknown field");
    assert!(matches!(err, BackupError::Record { line: 4, .. }), "{err}");
    let link = "{\"record\":\"audit_link\",\"seq\":1,\"resource_id\":\"e1\",\"hash\":\"h\",\
                \"event\":{\"version\":1,\"last_updated\":1,\"deleted\":false,\"content\":\"\",\"extra\":1}}";
    assert!(matches!(Record::parse(link.as_bytes(), 5), Err(BackupError::Record { line: 5, .. })));
}

#[test]
fn warnings_name_sections_missing_or_misplaced_for_the_database() {
    let identity = BackupCounts {
        tenant: 1,
        clients: 1,
        users: 2,
        audit_links: 5,
        audit_events: 5,
        audit_head: 1,
        ..Default::default()
    };
    let clinical = BackupCounts { resources: 10, history: 14, lab_endpoints: 1, ..Default::default() };
    let both = BackupCounts { resources: 10, history: 14, ..identity };
    assert!(Database::All.warnings(&both).is_empty());
    assert!(Database::All.warnings(&identity)[0].contains("users but no resources"));
    assert!(Database::All.warnings(&clinical)[0].contains("resources but no users"));
    assert!(Database::Gateway.warnings(&identity).is_empty());
    let w = Database::Gateway.warnings(&clinical);
    assert!(w.iter().any(|w| w.contains("no users")) && w.iter().any(|w| w.contains("no audit chain")), "{w:?}");
    assert!(Database::Gateway.warnings(&both).iter().any(|w| w.contains("--database all")));
    assert!(Database::Clinical.warnings(&clinical).is_empty());
    assert!(Database::Clinical.warnings(&identity).iter().any(|w| w.contains("no resources")));
    assert_eq!(Database::parse("clinical"), Some(Database::Clinical));
    assert_eq!(Database::parse("patient-record"), None);
}

#[test]
fn a_restore_checks_the_recorded_checksum_and_the_database_before_the_key() {
    let passphrase = |p: &str| Secret::Passphrase(Zeroizing::new(p.to_owned()));
    let costs = KdfCosts { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
    let secret = passphrase("correct horse battery staple");
    let (key, kdf) = secret.for_writing(costs).unwrap();
    let good = records();
    let mut h = header(&key, 64);
    h.kdf = kdf;
    h.counts = counts_of(&good);
    h.audit = head_summary(&good);
    let mut w = crate::archive::ArchiveWriter::new(Vec::new(), &h, &key).unwrap();
    for r in &good {
        w.write_all(&r.to_line().unwrap()).unwrap();
    }
    let (written, bytes) = w.finish().unwrap();
    let path = std::env::temp_dir().join(format!("ehr-backup-prepare-{}.ehrbak", key.id()));
    std::fs::write(&path, bytes).unwrap();
    let opts = |secret: Secret, sha256: Option<String>, database| crate::RestoreOptions {
        secret,
        expect_tenant: None,
        expect_sha256: sha256,
        database,
        allow_broken_audit: false,
        now: DateTime::from_timestamp(1_767_225_600, 0).unwrap(),
    };
    // A wrong recorded checksum is reported as such even with a wrong passphrase: it is compared
    // before the key is derived.
    let wrong = passphrase("not the passphrase at all");
    let err = crate::prepare_restore(&path, &opts(wrong.clone(), Some("ab".repeat(32)), Database::All)).unwrap_err();
    assert!(matches!(err, BackupError::UnexpectedChecksum { .. }), "{err}");
    let err = crate::prepare_restore(&path, &opts(wrong, Some(written.sha256.clone()), Database::All)).unwrap_err();
    assert!(matches!(err, BackupError::WrongKey { .. }), "{err}");
    // An archive of one database is not restored as another's.
    let err = crate::prepare_restore(&path, &opts(secret.clone(), None, Database::Gateway)).unwrap_err();
    assert!(matches!(err, BackupError::WrongDatabase { archive: "all", target: "gateway" }), "{err}");
    let prepared =
        crate::prepare_restore(&path, &opts(secret, Some(written.sha256.to_uppercase()), Database::All)).unwrap();
    assert_eq!(prepared.tenant().as_str(), "h1");
    assert_eq!(prepared.checked.counts, counts_of(&good));
    std::fs::remove_file(&path).unwrap();
}

// ── Content ────────────────────────────────────────────────────────────────────────────────

fn link_hash(prev: &str, seq: i64, id: &str, content: &str) -> String {
    crate::hex(&Sha256::digest(format!("{prev}\n{seq}\n{id}\n{content}").as_bytes()))
}

fn event(id: &str) -> String {
    format!("{{\"resourceType\":\"AuditEvent\",\"id\":\"{id}\",\"meta\":{{\"versionId\":\"1\"}}}}")
}

/// The records of a small tenant with a chain of two events.
fn records() -> Vec<Record> {
    let h1 = link_hash(&"0".repeat(64), 1, "e1", &event("e1"));
    let h2 = link_hash(&h1, 2, "e2", &event("e2"));
    let link = |seq, id: &str, hash: &str| {
        Record::AuditLink(AuditLinkRow {
            seq,
            resource_id: id.into(),
            hash: hash.into(),
            event: Some(AuditEventRow { version: 1, last_updated: 1, deleted: false, content: event(id) }),
        })
    };
    vec![
        Record::Tenant(TenantRow { id: "h1".into(), name: "病院".into(), active: true, created_at: 1 }),
        Record::User(UserRow {
            id: "u1".into(),
            username: "alice".into(),
            display_name: "Alice".into(),
            password_hash: "$argon2id$…".into(),
            roles: "doctor".into(),
            active: true,
            created_at: 1,
            updated_at: 1,
            last_login_at: None,
            mfa_secret: Some("v1:sealed".into()),
            mfa_confirmed: true,
            mfa_last_step: Some(5),
            fhir_user: None,
        }),
        Record::Resource(ResourceRow {
            resource_type: "Patient".into(),
            id: "p1".into(),
            version: 2,
            last_updated: 2,
            deleted: false,
            content: "{\"resourceType\":\"Patient\",\"id\":\"p1\"}".into(),
        }),
        Record::Resource(ResourceRow {
            resource_type: "Patient".into(),
            id: "p2".into(),
            version: 2,
            last_updated: 3,
            deleted: true,
            content: String::new(),
        }),
        link(1, "e1", &h1),
        link(2, "e2", &h2),
        Record::AuditHead(AuditHeadRow { seq: 2, hash: h2 }),
    ]
}

fn counts_of(records: &[Record]) -> BackupCounts {
    let mut c = BackupCounts::default();
    for r in records {
        match r {
            Record::Tenant(_) => c.tenant += 1,
            Record::User(_) => c.users += 1,
            Record::Resource(_) => c.resources += 1,
            Record::AuditLink(l) => {
                c.audit_links += 1;
                c.audit_events += u64::from(l.event.is_some());
            }
            Record::AuditHead(_) => c.audit_head += 1,
            _ => {}
        }
    }
    c
}

/// Writes `records` under a header claiming `counts` and `audit` to a temporary file.
fn file_of(key: &BackupKey, records: &[Record], counts: BackupCounts, audit: AuditSummary) -> std::path::PathBuf {
    let mut h = header(key, 64);
    h.counts = counts;
    h.audit = audit;
    let mut w = crate::archive::ArchiveWriter::new(Vec::new(), &h, key).unwrap();
    for r in records {
        w.write_all(&r.to_line().unwrap()).unwrap();
    }
    let (_, bytes) = w.finish().unwrap();
    let path = std::env::temp_dir().join(format!("ehr-backup-test-{}.ehrbak", key.id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn head_summary(records: &[Record]) -> AuditSummary {
    match records.iter().find_map(|r| if let Record::AuditHead(h) = r { Some(h.clone()) } else { None }) {
        Some(h) => AuditSummary { seq: h.seq, hash: h.hash, verified: true, problems: 0 },
        None => summary(),
    }
}

#[test]
fn records_are_checked_for_counts_order_and_the_audit_chain() {
    let key = BackupKey::generate();
    let secret = Secret::Key(key.clone());
    let good = records();
    let path = file_of(&key, &good, counts_of(&good), head_summary(&good));
    let verified = verify(&path, Some(&secret), Some("h1"), None).unwrap();
    let checked = verified.checked.unwrap();
    assert!(checked.audit.is_ok(), "{:?}", checked.audit);
    assert_eq!(checked.audit.checked, 2);
    assert_eq!(checked.counts, counts_of(&good));
    // The recorded checksum is checked when given; without the key only the structure is.
    assert!(verify(&path, None, None, Some(&verified.scanned.sha256.to_uppercase())).is_ok());
    assert!(matches!(verify(&path, None, None, Some(&"0".repeat(64))), Err(BackupError::UnexpectedChecksum { .. })));
    assert!(verify(&path, None, None, None).unwrap().checked.is_none());
    std::fs::remove_file(&path).unwrap();

    // The header's counts must be the records'.
    let mut wrong = counts_of(&good);
    wrong.resources += 1;
    let path = file_of(&key, &good, wrong, head_summary(&good));
    assert!(matches!(
        verify(&path, Some(&secret), None, None),
        Err(BackupError::CountMismatch { section: "resource", header: 3, found: 2 })
    ));
    std::fs::remove_file(&path).unwrap();

    // Sections in order.
    let mut shuffled = good.clone();
    shuffled.swap(1, 2);
    let path = file_of(&key, &shuffled, counts_of(&shuffled), head_summary(&shuffled));
    assert!(matches!(verify(&path, Some(&secret), None, None), Err(BackupError::Record { line: 3, .. })));
    std::fs::remove_file(&path).unwrap();

    // An altered event breaks its link; the chain check reports it as `ehr audit verify` would.
    let mut altered = good.clone();
    if let Record::AuditLink(l) = &mut altered[4] {
        l.event.as_mut().unwrap().content = event("e1").replace("\"1\"", "\"2\"");
    }
    let path = file_of(&key, &altered, counts_of(&altered), head_summary(&altered));
    let checked = verify(&path, Some(&secret), None, None).unwrap().checked.unwrap();
    assert_eq!(checked.audit.problems, [ehr_store::AuditProblem::HashMismatch { seq: 1, resource_id: "e1".into() }]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn content_check_refuses_inconsistent_records() {
    let key = BackupKey::generate();
    let h = header(&key, 64);
    let mut check = ContentCheck::new(&h);
    let other_tenant = Record::Tenant(TenantRow { id: "h2".into(), name: "x".into(), active: true, created_at: 1 });
    assert!(matches!(check.record(1, &other_tenant), Err(BackupError::Record { line: 1, .. })));
    let mismatched = Record::Resource(ResourceRow {
        resource_type: "Patient".into(),
        id: "p1".into(),
        version: 1,
        last_updated: 1,
        deleted: false,
        content: "{\"resourceType\":\"Patient\",\"id\":\"p9\"}".into(),
    });
    assert!(check.record(2, &mismatched).is_err());
    let not_json = Record::Resource(ResourceRow { content: "{".into(), ..resource_of(&mismatched) });
    assert!(check.record(3, &not_json).is_err());
    // A record that does not parse is reported by number, without its text.
    let err = Record::parse(b"{\"record\":\"resource\",\"type\":\"Patient\",\"id\":\"\xe5\xb1\xb1\xe7\x94\xb0\"}", 7)
        .expect_err("fields missing");
    assert!(!err.to_string().contains("山田"), "{err}");
    assert!(matches!(err, BackupError::Record { line: 7, .. }));
}

fn resource_of(r: &Record) -> ResourceRow {
    match r {
        Record::Resource(r) => r.clone(),
        _ => unreachable!(),
    }
}

#[test]
fn every_kind_of_record_survives_its_line() {
    let mut all = records();
    all.push(Record::Client(ClientRow {
        client_id: "h1-cli".into(),
        name: "cli".into(),
        kind: "public".into(),
        redirect_uris: "[\"http://127.0.0.1:8765/callback\"]".into(),
        jwks: None,
        scope: "openid".into(),
        active: true,
        created_at: 1,
    }));
    all.push(Record::LabEndpoint(LabEndpointRow {
        id: "lab".into(),
        name: "検査センター".into(),
        lab_facility: "LAB".into(),
        lab_application: "LABSYS".into(),
        our_facility: "HOSP".into(),
        our_application: "HIS".into(),
        transport: "mllp".into(),
        address: "127.0.0.1:2576".into(),
        charset: "iso-ir-87".into(),
        organization: None,
        is_default: true,
        max_attempts: 5,
        allowed_peers: String::new(),
        active: true,
        created_at: 1,
        updated_at: 1,
        last_outbound_at: None,
        last_inbound_at: Some(2),
        last_error: Some("timeout".into()),
    }));
    all.push(Record::RecoveryCode(RecoveryCodeRow { user_id: "u1".into(), code_hash: "h".into(), used_at: Some(3) }));
    all.push(Record::History(HistoryRow {
        resource_type: "Patient".into(),
        id: "p1".into(),
        version: 1,
        last_updated: 1,
        method: "POST".into(),
        deleted: false,
        content: "{\"resourceType\":\"Patient\",\"id\":\"p1\",\"text\":\"改行\\n\"}".into(),
    }));
    for (n, record) in all.iter().enumerate() {
        let line = record.to_line().unwrap();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line: {record:?}");
        assert_eq!(&Record::parse(&line[..line.len() - 1], n as u64).unwrap(), record);
    }
}
