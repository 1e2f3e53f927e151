//! The archive key: 32 random bytes kept in a key file (base64), or derived from a passphrase
//! with Argon2id. Archives name their key by an id (a fingerprint), never carry it.

use crate::error::BackupError;
use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// The length of an archive key (AES-256).
pub const KEY_LEN: usize = 32;

/// A passphrase shorter than this is refused for new archives.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// An AES-256 key for archives; its bytes are zeroed when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct BackupKey {
    bytes: [u8; KEY_LEN],
}

impl Drop for BackupKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupKey(id {})", self.id())
    }
}

impl BackupKey {
    /// A new random key (`ehr backup keygen`).
    pub fn generate() -> Self {
        let mut key = Self { bytes: [0_u8; KEY_LEN] };
        OsRng.fill_bytes(&mut key.bytes);
        key
    }

    /// The key as base64: the content of a key file (zeroed when dropped).
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.bytes))
    }

    /// A key from the content of a key file: the base64 text of 32 bytes (surrounding
    /// whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, BackupError> {
        let raw = Zeroizing::new(
            STANDARD.decode(text.trim()).map_err(|_| BackupError::InvalidKey("a key file holds base64 text"))?,
        );
        if raw.len() != KEY_LEN {
            return Err(BackupError::InvalidKey("a key file holds 32 bytes (`ehr backup keygen` writes one)"));
        }
        let mut key = Self { bytes: [0_u8; KEY_LEN] };
        key.bytes.copy_from_slice(&raw);
        Ok(key)
    }

    /// The key's id: the first 16 hex digits of a domain-separated SHA-256 of the key. It tells
    /// which key an archive needs without revealing the key.
    pub fn id(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"ehr-backup key id v1\n");
        hasher.update(self.bytes);
        crate::hex(&hasher.finalize()[..8])
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

/// Argon2id parameters of a passphrase-derived key, as recorded in the archive header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Argon2 version (19 = 0x13).
    pub version: u32,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// 16 random bytes, base64.
    pub salt: String,
}

/// Argon2id costs for new archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfCosts {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfCosts {
    /// RFC 9106's second recommended option with one lane: 64 MiB, 3 passes.
    fn default() -> Self {
        Self { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

/// Limits on the costs a header may ask for: the header is read before anything is
/// authenticated, so an altered archive must not make the reader allocate or compute without
/// bound. 1 GiB, 10 passes, 8 lanes: 16 times the memory and 3 times the passes of the default.
pub const MAX_M_COST_KIB: u32 = 1024 * 1024;
pub const MAX_T_COST: u32 = 10;
pub const MAX_P_COST: u32 = 8;

impl KdfParams {
    fn derive(&self, passphrase: &str) -> Result<BackupKey, BackupError> {
        if self.algorithm != "argon2id" || self.version != 0x13 {
            return Err(BackupError::BadHeader("unknown key derivation (expected argon2id version 19)".into()));
        }
        if self.m_cost_kib > MAX_M_COST_KIB || self.t_cost > MAX_T_COST || self.p_cost > MAX_P_COST {
            return Err(BackupError::BadHeader(format!(
                "key-derivation costs beyond the accepted limits (memory {} KiB, {} passes, {} lanes; at most \
                 {MAX_M_COST_KIB} KiB, {MAX_T_COST} passes, {MAX_P_COST} lanes): refused before deriving",
                self.m_cost_kib, self.t_cost, self.p_cost
            )));
        }
        let salt =
            STANDARD.decode(&self.salt).map_err(|_| BackupError::BadHeader("the KDF salt is not base64".into()))?;
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(KEY_LEN))
            .map_err(|_| BackupError::BadHeader("invalid key-derivation costs".into()))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = BackupKey { bytes: [0_u8; KEY_LEN] };
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, &mut key.bytes)
            .map_err(|_| BackupError::BadHeader("invalid key-derivation input".into()))?;
        Ok(key)
    }
}

/// What the operator holds to write or open archives: a key file or a passphrase (both zeroed
/// when dropped).
#[derive(Clone)]
pub enum Secret {
    Key(BackupKey),
    Passphrase(Zeroizing<String>),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(k) => write!(f, "Secret::Key({})", k.id()),
            Self::Passphrase(_) => f.write_str("Secret::Passphrase(<redacted>)"),
        }
    }
}

impl Secret {
    /// The key of a new archive, and the derivation to record in its header (a passphrase gets
    /// a fresh salt).
    pub fn for_writing(&self, costs: KdfCosts) -> Result<(BackupKey, Option<KdfParams>), BackupError> {
        match self {
            Self::Key(key) => Ok((key.clone(), None)),
            Self::Passphrase(p) => {
                if p.chars().count() < MIN_PASSPHRASE_CHARS {
                    return Err(BackupError::InvalidKey("a backup passphrase has at least 12 characters"));
                }
                let mut salt = [0_u8; 16];
                OsRng.fill_bytes(&mut salt);
                let params = KdfParams {
                    algorithm: "argon2id".into(),
                    version: 0x13,
                    m_cost_kib: costs.m_cost_kib,
                    t_cost: costs.t_cost,
                    p_cost: costs.p_cost,
                    salt: STANDARD.encode(salt),
                };
                let key = params.derive(p)?;
                Ok((key, Some(params)))
            }
        }
    }

    /// The key of an existing archive whose header records `kdf` and `key_id`; a key that is not
    /// the archive's is [`BackupError::WrongKey`].
    pub fn for_reading(&self, kdf: Option<&KdfParams>, key_id: &str) -> Result<BackupKey, BackupError> {
        let key = match (self, kdf) {
            (Self::Key(key), None) => key.clone(),
            (Self::Passphrase(p), Some(params)) => params.derive(p)?,
            (Self::Key(_), Some(_)) => {
                return Err(BackupError::KeyRequired(
                    "this archive is encrypted under a passphrase: set EHR_BACKUP_PASSPHRASE instead of --key-file",
                ));
            }
            (Self::Passphrase(_), None) => {
                return Err(BackupError::KeyRequired(
                    "this archive is encrypted with a key file: give it with --key-file",
                ));
            }
        };
        let given = key.id();
        if given != key_id {
            return Err(BackupError::WrongKey { expected: key_id.to_owned(), given });
        }
        Ok(key)
    }
}
