//! The token-signing key ring: ES256 keys in the gateway's database, rotated without downtime.
//!
//! A key is *published* (in the JWKS) from the moment it is created, *signs* from `created_at`
//! until `retire_at`, and stays published until `expires_at` = `retire_at` + the longest token
//! lifetime + a minute, so every token it signed still verifies until the token itself expires.
//! A rotation creates the new key to sign `publish_secs` in the future: every verifier (other
//! gateway replicas reload every 30 s, services refetch the JWKS on an unknown key id) knows the
//! key before the first token signed with it arrives.

use crate::error::GatewayError;
use crate::seal::{Sealer, key_owner};
use ehr_auth::{Claims, KeyPair, KeySource, SigningKeyRecord, TokenIssuer};
use ehr_store::{KeyRecord, Store};
use serde_json::Value;
use std::sync::{Arc, RwLock};

/// How often replicas reload the key ring from the database.
pub const RELOAD_SECS: u64 = 30;

/// The gateway's signing keys. Cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    issuer_name: String,
    store: Store,
    current: Arc<RwLock<TokenIssuer>>,
    /// Seconds a key signs before the next rotation is due.
    lifetime_secs: i64,
    /// Longest lifetime of a token it signs.
    token_secs: i64,
    /// Private keys are stored sealed.
    sealer: Sealer,
}

fn to_record(k: KeyRecord, sealer: &Sealer) -> Result<SigningKeyRecord, GatewayError> {
    Ok(SigningKeyRecord {
        private_pem: sealer.open(&k.private_pem, &key_owner(&k.kid))?,
        kid: k.kid,
        public_jwk: k.public_jwk,
        created_at: k.created_at,
        retire_at: k.retire_at,
        expires_at: k.expires_at,
    })
}

impl KeyRing {
    /// Loads the keys, creating the first one (or a successor, when every key is past its
    /// signing period) so that there is always a key that signs at `now`.
    pub async fn load(
        store: Store,
        issuer: String,
        lifetime_secs: i64,
        token_secs: i64,
        now: i64,
        sealer: Sealer,
    ) -> Result<Self, GatewayError> {
        let empty = TokenIssuer::new(issuer.clone(), Vec::new())?;
        let ring = Self {
            issuer_name: issuer,
            store,
            current: Arc::new(RwLock::new(empty)),
            lifetime_secs: lifetime_secs.max(3600),
            token_secs,
            sealer,
        };
        let keys = ring.reload().await?;
        if !keys.iter().any(|k| k.created_at <= now && now < k.retire_at) {
            ring.add_key(now, now).await?;
        }
        Ok(ring)
    }

    /// Re-reads the keys from the database.
    pub async fn reload(&self) -> Result<Vec<KeyRecord>, GatewayError> {
        let tx = self.store.system_read().await?;
        let keys = tx.signing_keys().await?;
        tx.commit().await?;
        let records = keys.iter().cloned().map(|k| to_record(k, &self.sealer)).collect::<Result<Vec<_>, _>>()?;
        let issuer = TokenIssuer::new(self.issuer_name.clone(), records)?;
        if let Ok(mut current) = self.current.write() {
            *current = issuer;
        }
        Ok(keys)
    }

    async fn add_key(&self, now: i64, activate_at: i64) -> Result<String, GatewayError> {
        let pair = KeyPair::generate(now)?;
        let retire_at = activate_at + self.lifetime_secs;
        let record = KeyRecord {
            kid: pair.kid.clone(),
            private_pem: self.sealer.seal(&pair.private_pem, &key_owner(&pair.kid))?,
            public_jwk: pair.public_jwk,
            created_at: activate_at,
            retire_at,
            expires_at: retire_at + self.token_secs + 60,
        };
        let tx = self.store.system_write().await?;
        // The keys signing now stop when the new one starts.
        for k in tx.signing_keys().await? {
            if k.retire_at > activate_at && k.created_at <= activate_at {
                tx.retire_signing_key(&k.kid, activate_at, activate_at + self.token_secs + 60).await?;
            }
        }
        tx.insert_signing_key(&record).await?;
        tx.commit().await?;
        self.reload().await?;
        Ok(pair.kid)
    }

    /// Rotates: a new key signs from `now + publish_secs`; the current one signs until then and
    /// stays published until its last token has expired. Returns the new key id.
    pub async fn rotate(&self, now: i64, publish_secs: i64) -> Result<String, GatewayError> {
        self.add_key(now, now + publish_secs.max(0)).await
    }

    /// Schedules the successor of the signing key five minutes before its period ends (called
    /// periodically), or creates a key at once when none signs at `now`.
    pub async fn rotate_if_due(&self, now: i64) -> Result<Option<String>, GatewayError> {
        let keys = self.reload().await?;
        let signing = keys.iter().filter(|k| k.created_at <= now && now < k.retire_at).max_by_key(|k| k.created_at);
        let successor = keys.iter().any(|k| k.created_at > now);
        match signing {
            None => self.add_key(now, now).await.map(Some),
            Some(k) if !successor && k.retire_at - now <= 300 => self.add_key(now, k.retire_at).await.map(Some),
            Some(_) => Ok(None),
        }
    }

    /// Signs an access token with the key of the moment.
    pub fn sign(&self, claims: &Claims, now: i64) -> Result<String, GatewayError> {
        let issuer = self.current.read().map_err(|_| GatewayError::Upstream)?;
        Ok(issuer.sign(claims, now)?)
    }

    /// The published keys (RFC 7517 JWK Set).
    pub fn jwks(&self, now: i64) -> Value {
        self.current.read().map(|i| i.jwks(now)).unwrap_or_else(|_| serde_json::json!({"keys": []}))
    }

    /// The issuer (`iss`) of the tokens it signs.
    pub fn issuer(&self) -> &str {
        &self.issuer_name
    }

    /// A key source for an in-process [`ehr_auth::Verifier`] (target `all`): the ring itself,
    /// so a rotation is seen without an HTTP round trip.
    pub fn key_source(&self, clock: Arc<dyn ehr_core::Clock>) -> KeySource {
        let ring = self.clone();
        KeySource::Provider(Arc::new(move || ring.jwks(clock.now().timestamp())))
    }
}
