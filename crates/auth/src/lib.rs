//! Identity and security primitives: issuing and verifying tokens, SMART v2 scopes, passwords,
//! second factors and access rights by job type.
//!
//! Services verify tokens themselves against the issuers' JWKS (zero trust inside the cluster):
//! ES256 signatures only, issuer and expiry checked, each key bound to the issuer that published
//! it, the tenant taken from the `tenant` claim and nowhere else. The gateway issues tokens with
//! [`TokenIssuer`] from a rotating key ring; the development key ([`DevSigner`]) remains for
//! `ehr dev-token` and the test kit.
//!
//! Everything here is pure policy and cryptography: no storage, no clock (every function that
//! needs the time takes `now_unix`), randomness from the operating system or a caller's CSPRNG.
//! The MHLW guideline (v6.0) requirements behind it: identification and authentication of every
//! user, multi-factor authentication, measures against password guessing, and access rights by
//! job type and duty (`docs/security/access-matrix.md`).

mod assertion;
mod dev;
mod error;
mod lockout;
mod matrix;
mod password;
mod pkce;
mod recovery;
mod scope;
mod signing;
mod totp;
mod verify;

pub use assertion::{AssertionClaims, verify_client_assertion};
pub use dev::{DEV_ISSUER, DEV_KEY_ID, DevSigner, dev_jwks};
pub use error::AuthError;
pub use lockout::LockoutPolicy;
pub use matrix::AccessMatrix;
pub use password::{MAX_PASSWORD_BYTES, PasswordPolicy, verify_password};
pub use pkce::verify_pkce_s256;
pub use recovery::{RecoveryCodes, find_recovery_code, hash_recovery_code};
pub use scope::{Interaction, ScopeSet, narrow_scopes, resource_scope};
pub use signing::{KeyPair, SigningKeyRecord, TokenIssuer};
pub use totp::{TotpCode, TotpSecret};
pub use verify::{Claims, KeySource, Trust, VerifiedToken, Verifier};
