//! The archive container: a plaintext header, the record stream encrypted in chunks, and a
//! checksum.
//!
//! ```text
//! magic     8 bytes   89 45 48 52 42 41 4B 0A  ("\x89EHRBAK\n")
//! version   u16 BE    1
//! length    u32 BE    length of the header
//! header    JSON      Header (tenant, time, counts, key id, KDF, nonce prefix, chunk size, …)
//! chunk*    u8        0 = more follow, 1 = last
//!           u32 BE    ciphertext length (chunk plaintext + 16-byte tag)
//!           bytes     AES-256-GCM(key, nonce, plaintext, ad)
//! trailer   8 bytes   "EHRBKEND"
//!           32 bytes  SHA-256 of every byte before them
//! ```
//!
//! Chunks follow the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): the
//! plaintext is cut into chunks of `chunk_size` bytes (the last one 0..=chunk_size), and chunk
//! `i` is sealed under the nonce `prefix(7) ‖ i (u32 BE) ‖ last (1 byte)`, the prefix random per
//! archive, with the SHA-256 of everything before the first chunk (magic to header) as
//! associated data. A reordered chunk fails (its counter), a truncated stream fails (no chunk
//! sealed as last), appended chunks fail (nothing follows the last), and an edited header fails
//! every chunk. The trailer's checksum finds damage without the key; whoever can rewrite the
//! file can recompute it, which the authentication then catches.

use crate::error::BackupError;
use crate::key::{BackupKey, KdfParams};
use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use ehr_store::backup::BackupCounts;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

/// The first bytes of every archive.
pub const MAGIC: [u8; 8] = *b"\x89EHRBAK\n";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// The bytes before the trailer's checksum.
pub const TRAILER_MAGIC: [u8; 8] = *b"EHRBKEND";
/// Plaintext bytes per chunk.
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;

const TAG_LEN: usize = 16;
const PREFIX_LEN: usize = 7;
const MAX_HEADER_LEN: u32 = 1024 * 1024;
const MIN_CHUNK_SIZE: u32 = 16;
const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;

/// Which database of a deployment an archive was read from, and so which sections it holds:
/// target `all` keeps a tenant in one database; in microservices mode the gateway's holds
/// identity, OAuth clients and the audit chain, the clinical one resources, history and lab
/// endpoints — two archives per tenant, each restored into the matching database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Database {
    /// One database for every service (target `all`): every section.
    #[default]
    All,
    /// The gateway's database in microservices mode: registry row, clients, users, recovery
    /// codes, the audit chain.
    Gateway,
    /// The clinical database in microservices mode: resources, history, lab endpoints.
    Clinical,
}

impl Database {
    /// Parses `all`, `gateway` or `clinical`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Self::All),
            "gateway" => Some(Self::Gateway),
            "clinical" => Some(Self::Clinical),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Gateway => "gateway",
            Self::Clinical => "clinical",
        }
    }

    /// What looks wrong in the counts of a tenant read from this database: a section that
    /// should be there is empty, or one that belongs to the other database is not. Warnings
    /// only — a new tenant may have no resources yet — for the operator to judge.
    pub fn warnings(self, c: &BackupCounts) -> Vec<String> {
        let mut out = Vec::new();
        let identity = c.users > 0 || c.clients > 0 || c.tenant > 0;
        let audit = c.audit_links > 0;
        let clinical = c.resources > 0 || c.history > 0 || c.lab_endpoints > 0;
        match self {
            Self::All => {
                if identity && !clinical {
                    out.push(
                        "the tenant has users but no resources here: in microservices mode this is the gateway's \
                         database; back it up with --database gateway and the clinical database with \
                         --database clinical"
                            .to_owned(),
                    );
                }
                if clinical && !identity && !audit {
                    out.push(
                        "the tenant has resources but no users, clients or audit chain here: in microservices mode \
                         this is the clinical database; back it up with --database clinical and the gateway's \
                         database with --database gateway"
                            .to_owned(),
                    );
                }
            }
            Self::Gateway => {
                for (n, what) in [(c.tenant, "registry row"), (c.users, "users"), (c.audit_links, "audit chain")] {
                    if n == 0 {
                        out.push(format!("the tenant has no {what} in this database, which should be the gateway's"));
                    }
                }
                if clinical {
                    out.push(
                        "this database holds resources, history or lab endpoints of the tenant: if it serves every \
                         service (target all), back it up with --database all"
                            .to_owned(),
                    );
                }
            }
            Self::Clinical => {
                if c.resources == 0 && c.history == 0 {
                    out.push(
                        "the tenant has no resources in this database, which should be the clinical one".to_owned(),
                    );
                }
                if identity || audit {
                    out.push(
                        "this database holds users, clients or the audit chain of the tenant: if it serves every \
                         service (target all), back it up with --database all; if it is the gateway's, with \
                         --database gateway"
                            .to_owned(),
                    );
                }
            }
        }
        out
    }
}

/// What the audit chain looked like when the archive was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSummary {
    /// The head's sequence number (0: no event yet).
    pub seq: i64,
    /// The head's hash (64 zeros: no event yet).
    pub hash: String,
    /// Whether the chain verified (`ehr audit verify`'s check, in the backup's snapshot).
    pub verified: bool,
    /// The number of problems found.
    pub problems: u64,
}

/// The archive header: plaintext, bound to every chunk as associated data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always `ehr-backup`.
    pub format: String,
    /// The schema level of the `ehr` that wrote it ([`ehr_store::backup::schema_level`]): an
    /// archive of a higher level than the reader's is refused (its rows may not fit).
    #[serde(default)]
    pub schema: u32,
    pub tenant: String,
    /// The database it was read from (absent: `all`).
    #[serde(default)]
    pub database: Database,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The version of `ehr` that wrote the archive.
    pub app_version: String,
    /// `sqlite` or `postgres`.
    pub source_backend: String,
    /// Always `AES-256-GCM`.
    pub cipher: String,
    pub chunk_size: u32,
    /// 7 random bytes, base64: the first part of every chunk's nonce.
    pub nonce_prefix: String,
    /// The id of the key ([`BackupKey::id`]).
    pub key_id: String,
    /// How the key derives from a passphrase; absent for a key file.
    pub kdf: Option<KdfParams>,
    /// The record stream: `ndjson` (one JSON record per line).
    pub records: String,
    /// The number of records of each section.
    pub counts: BackupCounts,
    pub audit: AuditSummary,
}

impl Header {
    /// A header for a new archive of `tenant` (of database `all`: set [`Header::database`]
    /// for another), with a fresh nonce prefix.
    pub fn new(
        tenant: &str,
        created_at: DateTime<Utc>,
        source_backend: &str,
        counts: BackupCounts,
        audit: AuditSummary,
        key: &BackupKey,
        kdf: Option<KdfParams>,
    ) -> Self {
        let mut prefix = [0_u8; PREFIX_LEN];
        OsRng.fill_bytes(&mut prefix);
        Self {
            format: "ehr-backup".into(),
            schema: ehr_store::backup::schema_level(),
            tenant: tenant.to_owned(),
            database: Database::All,
            created_at: created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            app_version: env!("CARGO_PKG_VERSION").into(),
            source_backend: source_backend.to_owned(),
            cipher: "AES-256-GCM".into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
            nonce_prefix: STANDARD.encode(prefix),
            key_id: key.id(),
            kdf,
            records: "ndjson".into(),
            counts,
            audit,
        }
    }

    fn check(&self) -> Result<[u8; PREFIX_LEN], BackupError> {
        if self.format != "ehr-backup" || self.cipher != "AES-256-GCM" || self.records != "ndjson" {
            return Err(BackupError::BadHeader("unknown format, cipher or record encoding".into()));
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(BackupError::BadHeader("chunk size out of range".into()));
        }
        let prefix = STANDARD
            .decode(&self.nonce_prefix)
            .ok()
            .and_then(|p| <[u8; PREFIX_LEN]>::try_from(p).ok())
            .ok_or_else(|| BackupError::BadHeader("the nonce prefix is not 7 bytes of base64".into()))?;
        Ok(prefix)
    }
}

/// The serialised bytes before the first chunk.
fn preamble(header: &Header) -> Result<Vec<u8>, BackupError> {
    let json = serde_json::to_vec(header).map_err(|_| BackupError::BadHeader("not serialisable".into()))?;
    let len = u32::try_from(json.len()).ok().filter(|l| *l <= MAX_HEADER_LEN);
    let len = len.ok_or_else(|| BackupError::BadHeader("header too long".into()))?;
    let mut out = Vec::with_capacity(json.len() + 14);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

fn nonce(prefix: &[u8; PREFIX_LEN], counter: u32, last: bool) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0_u8; 12];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::from(n)
}

/// Lower-case hex of a SHA-256 state's digest.
fn digest_hex(hasher: Sha256) -> String {
    crate::hex(&hasher.finalize())
}

/// What writing an archive produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// SHA-256 of the whole file, as `sha256sum` prints it: what the operator records.
    pub sha256: String,
    pub bytes: u64,
    pub chunks: u64,
}

/// Writes an archive: the header at once, then the plaintext record stream given to
/// [`ArchiveWriter::write_all`], sealed chunk by chunk, then (at [`ArchiveWriter::finish`]) the
/// last chunk and the trailer.
pub struct ArchiveWriter<W: Write> {
    out: W,
    hasher: Sha256,
    bytes: u64,
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX_LEN],
    ad: [u8; 32],
    chunk_size: usize,
    counter: u32,
    buf: Vec<u8>,
}

impl<W: Write> ArchiveWriter<W> {
    /// Starts an archive with `header`, sealed with `key` (which must be the header's).
    pub fn new(out: W, header: &Header, key: &BackupKey) -> Result<Self, BackupError> {
        let prefix = header.check()?;
        if header.key_id != key.id() {
            return Err(BackupError::BadHeader("the header names another key".into()));
        }
        let preamble = preamble(header)?;
        let mut me = Self {
            out,
            hasher: Sha256::new(),
            bytes: 0,
            cipher: Aes256Gcm::new(&(*key.bytes()).into()),
            prefix,
            ad: Sha256::digest(&preamble).into(),
            chunk_size: header.chunk_size as usize,
            counter: 0,
            buf: Vec::with_capacity(header.chunk_size as usize * 2),
        };
        me.emit(&preamble)?;
        Ok(me)
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Appends plaintext to the record stream.
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), BackupError> {
        self.buf.extend_from_slice(data);
        // A full chunk is sealed only once more data follows it: the last chunk must be sealed
        // as last, and until `finish` it is not known which one that is.
        while self.buf.len() > self.chunk_size {
            let rest = self.buf.split_off(self.chunk_size);
            let chunk = std::mem::replace(&mut self.buf, rest);
            self.seal(&chunk, false)?;
        }
        Ok(())
    }

    fn seal(&mut self, plaintext: &[u8], last: bool) -> Result<(), BackupError> {
        let n = nonce(&self.prefix, self.counter, last);
        let ct = self
            .cipher
            .encrypt(&n, Payload { msg: plaintext, aad: &self.ad })
            .map_err(|_| BackupError::Corrupt("encryption failed".into()))?;
        let len = u32::try_from(ct.len()).map_err(|_| BackupError::Corrupt("chunk too long".into()))?;
        self.emit(&[u8::from(last)])?;
        self.emit(&len.to_be_bytes())?;
        self.emit(&ct)?;
        // 2^32 chunks of the default size are 256 TiB; beyond, the nonce would repeat.
        self.counter = self.counter.checked_add(1).ok_or_else(|| BackupError::Corrupt("too many chunks".into()))?;
        Ok(())
    }

    /// Seals the last chunk, writes the trailer and flushes; returns the file's checksum.
    pub fn finish(mut self) -> Result<(Written, W), BackupError> {
        let rest = std::mem::take(&mut self.buf);
        self.seal(&rest, true)?;
        self.emit(&TRAILER_MAGIC)?;
        let embedded: [u8; 32] = self.hasher.clone().finalize().into();
        self.emit(&embedded)?;
        self.out.flush()?;
        let written = Written { sha256: digest_hex(self.hasher), bytes: self.bytes, chunks: u64::from(self.counter) };
        Ok((written, self.out))
    }
}

/// Reads exactly `buf.len()` bytes, or reports truncation.
fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), BackupError> {
    match r.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(BackupError::Truncated(what)),
        Err(e) => Err(BackupError::Io(e)),
    }
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Hashing<R> {
    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), BackupError> {
        read_exact(&mut self.inner, buf, what)?;
        self.hasher.update(&*buf);
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Reads the trailer, checks its checksum and that nothing follows; returns the whole
    /// file's SHA-256.
    fn trailer(&mut self) -> Result<String, BackupError> {
        let mut magic = [0_u8; 8];
        self.take(&mut magic, "no trailer after the last chunk")?;
        if magic != TRAILER_MAGIC {
            return Err(BackupError::Corrupt("no trailer after the last chunk".into()));
        }
        let expected: [u8; 32] = self.hasher.clone().finalize().into();
        let mut embedded = [0_u8; 32];
        self.take(&mut embedded, "the trailer's checksum is cut off")?;
        if embedded != expected {
            return Err(BackupError::Checksum);
        }
        let mut more = [0_u8; 1];
        loop {
            match self.inner.read(&mut more) {
                Ok(0) => break,
                Ok(_) => return Err(BackupError::Corrupt("data follows the trailer".into())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(BackupError::Io(e)),
            }
        }
        Ok(digest_hex(self.hasher.clone()))
    }
}

/// Reads the preamble: magic, version, header. Returns the header and the SHA-256 of the
/// preamble (the chunks' associated data).
fn read_preamble<R: Read>(r: &mut Hashing<R>) -> Result<(Header, [u8; 32]), BackupError> {
    let mut magic = [0_u8; 8];
    match r.take(&mut magic, "shorter than the magic bytes") {
        Err(BackupError::Truncated(_)) => return Err(BackupError::NotAnArchive),
        other => other?,
    }
    if magic != MAGIC {
        return Err(BackupError::NotAnArchive);
    }
    let mut version = [0_u8; 2];
    r.take(&mut version, "the header is cut off")?;
    let version = u16::from_be_bytes(version);
    if version != VERSION {
        return Err(BackupError::UnsupportedVersion(version));
    }
    let mut len = [0_u8; 4];
    r.take(&mut len, "the header is cut off")?;
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER_LEN {
        return Err(BackupError::BadHeader("header too long".into()));
    }
    let mut json = vec![0_u8; len as usize];
    r.take(&mut json, "the header is cut off")?;
    let value: serde_json::Value =
        serde_json::from_slice(&json).map_err(|_| BackupError::BadHeader("not a JSON header".into()))?;
    // A newer archive is told apart from a malformed one before its fields are checked.
    let schema = value.get("schema").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let ours = ehr_store::backup::schema_level();
    if schema > u64::from(ours) {
        let app_version = value.get("app_version").and_then(serde_json::Value::as_str).unwrap_or("?");
        return Err(BackupError::NewerArchive { schema, ours, app_version: app_version.chars().take(40).collect() });
    }
    let header: Header = serde_json::from_value(value)
        .map_err(|_| BackupError::BadHeader("not a header of this format (unknown or missing fields)".into()))?;
    header.check()?;
    let ad: [u8; 32] = r.hasher.clone().finalize().into();
    Ok((header, ad))
}

/// One chunk frame: whether it is the last, and its ciphertext.
fn read_frame<R: Read>(r: &mut Hashing<R>, chunk_size: u32, index: u64) -> Result<(bool, Vec<u8>), BackupError> {
    let mut head = [0_u8; 5];
    r.take(&mut head, "it ends before the last chunk")?;
    let last = match head[0] {
        0 => false,
        1 => true,
        _ => return Err(BackupError::Corrupt(format!("chunk {index} has an invalid frame"))),
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let full = chunk_size as usize + TAG_LEN;
    // Every chunk but the last is full; the last holds at least its tag.
    if (!last && len != full) || len < TAG_LEN || len > full {
        return Err(BackupError::Corrupt(format!("chunk {index} has an invalid length")));
    }
    let mut ct = vec![0_u8; len];
    r.take(&mut ct, "a chunk is cut off")?;
    Ok((last, ct))
}

/// What [`scan`] found: the structure and checksum hold.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub header: Header,
    /// SHA-256 of the whole file.
    pub sha256: String,
    pub bytes: u64,
    pub chunks: u64,
}

/// Checks an archive without its key: magic, header, chunk framing, trailer, checksum, nothing
/// after the end. Damage anywhere is found here; deliberate changes need the key to be found
/// (the checksum can be recomputed).
pub fn scan<R: Read>(input: R) -> Result<Scanned, BackupError> {
    let mut r = Hashing { inner: input, hasher: Sha256::new(), bytes: 0 };
    let (header, _) = read_preamble(&mut r)?;
    let mut chunks = 0_u64;
    loop {
        let (last, _) = read_frame(&mut r, header.chunk_size, chunks)?;
        chunks += 1;
        if last {
            break;
        }
    }
    let sha256 = r.trailer()?;
    Ok(Scanned { header, sha256, bytes: r.bytes, chunks })
}

/// Opens an archive and yields its plaintext chunk by chunk, each authenticated; the end of the
/// stream is reported only after the last chunk, the trailer and its checksum were checked.
pub struct Decryptor<R: Read> {
    r: Hashing<R>,
    header: Header,
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX_LEN],
    ad: [u8; 32],
    counter: u64,
    sha256: Option<String>,
}

impl<R: Read> Decryptor<R> {
    /// Reads the header; with `expect_tenant`, refuses an archive of another tenant; `key`
    /// gives the archive's key from the header's key id and key derivation.
    pub fn open(
        input: R,
        expect_tenant: Option<&str>,
        key: impl FnOnce(&Header) -> Result<BackupKey, BackupError>,
    ) -> Result<Self, BackupError> {
        let mut r = Hashing { inner: input, hasher: Sha256::new(), bytes: 0 };
        let (header, ad) = read_preamble(&mut r)?;
        if let Some(expected) = expect_tenant
            && expected != header.tenant
        {
            return Err(BackupError::WrongTenant { expected: expected.to_owned(), found: header.tenant.clone() });
        }
        let key = key(&header)?;
        if key.id() != header.key_id {
            return Err(BackupError::WrongKey { expected: header.key_id.clone(), given: key.id() });
        }
        let prefix = header.check()?;
        Ok(Self { r, cipher: Aes256Gcm::new(&(*key.bytes()).into()), header, prefix, ad, counter: 0, sha256: None })
    }

    /// The archive's header (authenticated once the first chunk is).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next chunk's plaintext; `None` at the verified end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        if self.sha256.is_some() {
            return Ok(None);
        }
        let index = self.counter;
        let (last, ct) = read_frame(&mut self.r, self.header.chunk_size, index)?;
        let counter = u32::try_from(index).map_err(|_| BackupError::Corrupt("too many chunks".into()))?;
        let n = nonce(&self.prefix, counter, last);
        let plain = self
            .cipher
            .decrypt(&n, Payload { msg: &ct, aad: &self.ad })
            .map_err(|_| BackupError::Authentication(index))?;
        self.counter += 1;
        if last {
            self.sha256 = Some(self.r.trailer()?);
        }
        Ok(Some(plain))
    }

    /// The whole file's SHA-256, once the end was reached.
    pub fn sha256(&self) -> Option<&str> {
        self.sha256.as_deref()
    }
}

/// Splits the plaintext of a [`Decryptor`] into lines (records), across chunk boundaries.
pub struct Lines<R: Read> {
    dec: Decryptor<R>,
    buf: Vec<u8>,
    /// Start of the next line in `buf`.
    pos: usize,
    /// How far from `pos` the buffer is known to hold no newline (a long line spans chunks).
    scanned: usize,
    line: u64,
}

/// The longest record accepted (a resource of a few hundred MiB would be absurd).
const MAX_LINE: usize = 256 * 1024 * 1024;

impl<R: Read> Lines<R> {
    pub fn new(dec: Decryptor<R>) -> Self {
        Self { dec, buf: Vec::new(), pos: 0, scanned: 0, line: 0 }
    }

    pub fn header(&self) -> &Header {
        self.dec.header()
    }

    /// The number of the line last returned (1-based).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// The next line without its `\n`; `None` at the verified end of the stream.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        loop {
            let from = self.pos + self.scanned;
            if let Some(n) = self.buf[from..].iter().position(|b| *b == b'\n') {
                let end = from + n;
                let line = self.buf[self.pos..end].to_vec();
                self.pos = end + 1;
                self.scanned = 0;
                self.line += 1;
                return Ok(Some(line));
            }
            self.scanned = self.buf.len() - self.pos;
            if self.buf.len() - self.pos > MAX_LINE {
                return Err(BackupError::Record { line: self.line + 1, what: "is too long".into() });
            }
            match self.dec.next_chunk()? {
                Some(chunk) => {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.buf.extend_from_slice(&chunk);
                }
                None if self.pos == self.buf.len() => return Ok(None),
                None => {
                    return Err(BackupError::Record {
                        line: self.line + 1,
                        what: "does not end with a newline".into(),
                    });
                }
            }
        }
    }

    /// The whole file's SHA-256, once the end was reached.
    pub fn sha256(&self) -> Option<&str> {
        self.dec.sha256()
    }
}
