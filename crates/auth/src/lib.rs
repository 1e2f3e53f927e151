//! Bearer-token verification and SMART v2 scope enforcement.
//!
//! Services verify tokens themselves against the issuer's JWKS (zero trust inside the cluster):
//! ES256 signatures only, issuer and expiry checked, the tenant taken from the `tenant` claim and
//! nowhere else. Issuing tokens to users is the gateway's job (issue #3); this crate only signs
//! tokens with the *development* key, for `ehr dev-token` and the test kit.

mod dev;
mod error;
mod scope;
mod verify;

pub use dev::{DEV_ISSUER, DEV_KEY_ID, DevSigner, dev_jwks};
pub use error::AuthError;
pub use scope::{Interaction, ScopeSet};
pub use verify::{Claims, KeySource, Verifier};
