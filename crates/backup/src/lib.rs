//! Per-tenant offline backups: an encrypted (AES-256-GCM, in STREAM chunks), checksummed
//! archive of one tenant — its registry row, OAuth clients, lab endpoints, users and recovery
//! codes, every resource's current version and every historical one, and the audit chain — read
//! in one database snapshot; verified whole before a restore writes anything, and restored in
//! one transaction. The format is in [`archive`] and [`record`]; the operations in [`ops`];
//! the procedure in `docs/operations/backup.md`.
//!
//! Nothing here logs: tenant data and keys never reach a log line, and errors name sections,
//! records and key ids only.

pub mod archive;
mod error;
mod key;
pub mod ops;
pub mod record;

pub use archive::{Database, Header, Scanned, Written};
pub use error::BackupError;
pub use key::{BackupKey, KdfCosts, KdfParams, MAX_M_COST_KIB, MAX_P_COST, MAX_T_COST, MIN_PASSPHRASE_CHARS, Secret};
pub use ops::{
    CreateOptions, Created, Prepared, RestoreOptions, Restored, Verified, create, prepare_restore, restore, verify,
};
pub use record::{Checked, Record};
pub use zeroize::Zeroizing;

/// Lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests;
